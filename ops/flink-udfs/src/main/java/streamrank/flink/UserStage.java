package streamrank.flink;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.MapState;
import org.apache.flink.api.common.state.MapStateDescriptor;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * Keyed by user, after the item stage (which dropped the duplicates): for an impression, reads
 * the user and user x category features as of the impression (before it is applied) and the
 * user's last clicked items and categories ({@code features.example_builder.ExampleBuilder}'s
 * {@code user_side} and {@code recent}); applies every event that feeds state
 * ({@code features.rows.update_user}, {@code update_user_category}, each to a fresh state when
 * the key's expired, {@code features.state.alive}) and sends the user row and the user x
 * category row to {@link Rows#TAG} at once, in arrival order; forwards impressions, clicks,
 * purchases and the item stage's {@link EventRecord#ITEM_FEATURES} records to the label join.
 * A rounded event-time timer ({@link FeatureState#expiryTimer}) frees the user's state and its
 * expired categories once no acceptable event can see them.
 */
public class UserStage extends KeyedProcessFunction<String, EventRecord, EventRecord>
        implements ResultTypeQueryable<EventRecord> {
    private static final String[] USER_LISTS = {"last_items", "last_categories"};
    private static final String[] USER_CATEGORY_STORED =
            {"uc_clicks_24h", "uc_purchases_24h", "uc_affinity"};

    private final long latenessMs;
    private final long ttlMs;
    private transient ValueState<FeatureState.User> user;
    private transient MapState<String, FeatureState.UserCategory> categories;
    private transient Counter expiredKeys;

    public UserStage(long latenessMs, long ttlMs) {
        this.latenessMs = latenessMs;
        this.ttlMs = ttlMs;
    }

    @Override
    public void open(OpenContext ctx) {
        user = getRuntimeContext().getState(
                new ValueStateDescriptor<>("user", FeatureState.User.class));
        categories = getRuntimeContext().getMapState(new MapStateDescriptor<>(
                "user-categories", Types.STRING, TypeInformation.of(FeatureState.UserCategory.class)));
        expiredKeys = getRuntimeContext().getMetricGroup().counter("expired_keys");
    }

    @Override
    public void processElement(EventRecord e, Context ctx, Collector<EventRecord> out)
            throws Exception {
        if (e.isItemFeatures()) {
            out.collect(e);
            return;
        }
        long t = e.eventTime;
        FeatureState.User stored = user.value();
        long before = stored == null ? FeatureState.NONE : stored.lastMs;
        FeatureState.User u = FeatureState.alive(stored, t, ttlMs);
        FeatureState.UserCategory uc = e.categoryId == null ? null
                : FeatureState.alive(categories.get(e.categoryId), t, ttlMs);
        if (e.isImpression()) {
            e.features = new double[FeatureState.DENSE];
            FeatureState.userFeatures(u, t, e.features, FeatureState.USER_AT);
            FeatureState.userCategoryFeatures(uc == null ? new FeatureState.UserCategory() : uc,
                    u, e.categoryId, t, e.features, FeatureState.USER_CATEGORY_AT);
            e.recentItems = u.lastItems;
            e.recentCategories = u.lastCategories;
        }
        if (e.feedsState()) {
            FeatureState.applyUser(u, e.eventType, t, e.itemId, e.categoryId);
            user.update(u);
            long due = FeatureState.expiryTimer(u.lastMs, ttlMs, latenessMs);
            if (before == FeatureState.NONE
                    || FeatureState.expiryTimer(before, ttlMs, latenessMs) != due) {
                ctx.timerService().registerEventTimeTimer(due);
            }
            long asOf = u.lastMs;
            double[] values = new double[6];
            FeatureState.userFeatures(u, asOf, values, 0);
            ctx.output(Rows.TAG, Rows.row(Rows.USER_VIEW, new String[] {e.userId}, asOf,
                    FeatureState.USER_FEATURES, values,
                    new String[][] {u.lastItems, u.lastCategories}, USER_LISTS));
            if (e.categoryId != null) {
                FeatureState.applyUserCategory(uc, e.eventType, t);
                categories.put(e.categoryId, uc);
                double[] ucValues = new double[4];
                FeatureState.userCategoryFeatures(uc, u, null, asOf, ucValues, 0);
                ctx.output(Rows.TAG, Rows.row(Rows.USER_CATEGORY_VIEW,
                        new String[] {e.userId, e.categoryId}, asOf, USER_CATEGORY_STORED,
                        java.util.Arrays.copyOf(ucValues, 3), null, null));
            }
        }
        if (e.isImpression() || e.isLabel()) out.collect(e);
    }

    /** Frees what expired before {@code ts}, a time the watermark has passed (a timer's: the
     *  watermark itself jumps to the end of time at the end of a bounded input, while the
     *  timers it passed still fire one by one). */
    @Override
    public void onTimer(long ts, OnTimerContext ctx, Collector<EventRecord> out)
            throws Exception {
        FeatureState.User u = user.value();
        if (u != null && FeatureState.expired(u.lastMs, ts, ttlMs, latenessMs)) {
            user.clear();
            expiredKeys.inc();
        }
        List<String> stale = new ArrayList<>();
        for (Map.Entry<String, FeatureState.UserCategory> c : categories.entries()) {
            if (FeatureState.expired(c.getValue().lastMs, ts, ttlMs, latenessMs)) {
                stale.add(c.getKey());
            }
        }
        for (String c : stale) categories.remove(c);
    }

    @Override
    public TypeInformation<EventRecord> getProducedType() {
        return TypeInformation.of(EventRecord.class);
    }
}

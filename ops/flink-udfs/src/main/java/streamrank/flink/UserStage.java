package streamrank.flink;

import java.util.ArrayList;
import java.util.List;

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
 * Keyed by user: drops a repeated {@code event_id} (remembered until its event is older than
 * the lateness horizon, as in {@code features.labels.LabelJoiner}); for an impression, reads
 * the user and user x category features as of the impression (before it is applied); applies
 * every event that feeds state ({@code features.state.apply_user}, {@code apply_user_category})
 * and sends the user row and the user x category row ({@code features.rows.update_user},
 * {@code update_user_category}) to {@link Rows#TAG} at once, in arrival order; forwards the
 * event (with its partial features) to the item stage.
 */
public class UserStage extends KeyedProcessFunction<String, EventRecord, EventRecord>
        implements ResultTypeQueryable<EventRecord> {
    private static final String[] USER_LISTS = {"last_items", "last_categories"};
    private static final String[] USER_CATEGORY_STORED =
            {"uc_clicks_24h", "uc_purchases_24h", "uc_affinity"};

    private final long allowedLatenessMs;
    private transient ValueState<FeatureState.User> user;
    private transient MapState<String, FeatureState.UserCategory> categories;
    private transient MapState<String, Long> seen;
    private transient MapState<Long, List<String>> expiring;
    private transient Counter duplicates;

    public UserStage(long allowedLatenessMs) { this.allowedLatenessMs = allowedLatenessMs; }

    @Override
    public void open(OpenContext ctx) {
        user = getRuntimeContext().getState(
                new ValueStateDescriptor<>("user", FeatureState.User.class));
        categories = getRuntimeContext().getMapState(new MapStateDescriptor<>(
                "user-categories", Types.STRING, TypeInformation.of(FeatureState.UserCategory.class)));
        seen = getRuntimeContext().getMapState(
                new MapStateDescriptor<>("seen-ids", Types.STRING, Types.LONG));
        expiring = getRuntimeContext().getMapState(new MapStateDescriptor<>("seen-expiry",
                Types.LONG, Types.LIST(Types.STRING)));
        duplicates = getRuntimeContext().getMetricGroup().counter("duplicates");
    }

    @Override
    public void processElement(EventRecord e, Context ctx, Collector<EventRecord> out)
            throws Exception {
        if (seen.contains(e.eventId)) {
            duplicates.inc();
            return;
        }
        seen.put(e.eventId, e.eventTime);
        long expiry = e.eventTime + allowedLatenessMs;
        List<String> ids = expiring.get(expiry);
        if (ids == null) {
            ids = new ArrayList<>(2);
            ctx.timerService().registerEventTimeTimer(expiry);
        }
        ids.add(e.eventId);
        expiring.put(expiry, ids);

        FeatureState.User u = user.value();
        if (u == null) u = new FeatureState.User();
        FeatureState.UserCategory uc = e.categoryId == null ? null : categories.get(e.categoryId);
        if (e.isImpression()) {
            e.features = new double[FeatureState.DENSE];
            FeatureState.userFeatures(u, e.eventTime, e.features, FeatureState.USER_AT);
            FeatureState.userCategoryFeatures(uc == null ? new FeatureState.UserCategory() : uc,
                    u, e.categoryId, e.eventTime, e.features, FeatureState.USER_CATEGORY_AT);
        }
        if (e.feedsState()) {
            FeatureState.applyUser(u, e.eventType, e.eventTime, e.itemId, e.categoryId);
            user.update(u);
            long t = u.lastMs;
            double[] values = new double[6];
            FeatureState.userFeatures(u, t, values, 0);
            ctx.output(Rows.TAG, Rows.row(Rows.USER_VIEW, new String[] {e.userId}, t,
                    FeatureState.USER_FEATURES, values,
                    new String[][] {u.lastItems, u.lastCategories}, USER_LISTS));
            if (e.categoryId != null) {
                if (uc == null) uc = new FeatureState.UserCategory();
                FeatureState.applyUserCategory(uc, e.eventType, e.eventTime);
                categories.put(e.categoryId, uc);
                double[] ucValues = new double[4];
                FeatureState.userCategoryFeatures(uc, u, null, t, ucValues, 0);
                ctx.output(Rows.TAG, Rows.row(Rows.USER_CATEGORY_VIEW,
                        new String[] {e.userId, e.categoryId}, t, USER_CATEGORY_STORED,
                        java.util.Arrays.copyOf(ucValues, 3), null, null));
            }
        }
        out.collect(e);
    }

    @Override
    public void onTimer(long ts, OnTimerContext ctx, Collector<EventRecord> out)
            throws Exception {
        List<String> ids = expiring.get(ts);
        if (ids == null) return;
        for (String id : ids) seen.remove(id);
        expiring.remove(ts);
    }

    @Override
    public TypeInformation<EventRecord> getProducedType() {
        return TypeInformation.of(EventRecord.class);
    }
}

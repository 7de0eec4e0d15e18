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
 * Keyed by item (the Python {@code features} job's {@code ItemStage}): drops a repeated
 * {@code event_id} of the item before it touches any state (so duplicates are
 * {@code (item_id, event_id)}, as in {@code features.labels.LabelJoiner}; IDs are kept until
 * the watermark passes their time plus the allowed lateness); applies each new event that
 * feeds state on arrival to the item's <em>online</em> state and sends the item row
 * ({@code features.rows.update_item}) to {@link Rows#TAG} at once; forwards every new event to
 * the user stage. A <em>settled</em> copy of the item's state takes the item's events in
 * event-time order once the watermark passes their millisecond plus the allowed lateness (no
 * earlier event can be accepted after that): then every impression of that millisecond gets
 * the item's features as of its earlier milliseconds, sent on as an
 * {@link EventRecord#ITEM_FEATURES} record. State expires in event time
 * ({@code features.state.alive}); an hour-rounded timer frees it once no acceptable event can
 * see it.
 *
 * <p>Timers: Flink's watermark is the reference's minus 1 ms (see {@link EagerWatermarks}), so
 * a timer at {@code t + lateness} fires exactly when the reference's {@code t + lateness <
 * watermark} holds.
 */
public class ItemStage extends KeyedProcessFunction<String, EventRecord, EventRecord>
        implements ResultTypeQueryable<EventRecord> {
    private final long latenessMs;
    private final long ttlMs;
    private transient ValueState<FeatureState.Item> online;
    private transient ValueState<FeatureState.Item> settled;
    private transient MapState<Long, List<EventRecord>> held;
    private transient MapState<String, Long> seen;
    private transient Counter duplicates;
    private transient Counter expiredKeys;

    public ItemStage(long latenessMs, long ttlMs) {
        this.latenessMs = latenessMs;
        this.ttlMs = ttlMs;
    }

    @Override
    public void open(OpenContext ctx) {
        online = getRuntimeContext().getState(
                new ValueStateDescriptor<>("item-online", FeatureState.Item.class));
        settled = getRuntimeContext().getState(
                new ValueStateDescriptor<>("item-settled", FeatureState.Item.class));
        held = getRuntimeContext().getMapState(new MapStateDescriptor<>("item-held",
                Types.LONG, Types.LIST(TypeInformation.of(EventRecord.class))));
        seen = getRuntimeContext().getMapState(
                new MapStateDescriptor<>("seen-ids", Types.STRING, Types.LONG));
        duplicates = getRuntimeContext().getMetricGroup().counter("duplicates");
        expiredKeys = getRuntimeContext().getMetricGroup().counter("expired_keys");
    }

    @Override
    public void processElement(EventRecord e, Context ctx, Collector<EventRecord> out)
            throws Exception {
        if (seen.contains(e.eventId)) {
            duplicates.inc();
            return;
        }
        long t = e.eventTime;
        seen.put(e.eventId, t);
        List<EventRecord> events = held.get(t);
        if (events == null) {
            events = new ArrayList<>(2);
            ctx.timerService().registerEventTimeTimer(t + latenessMs);
        }
        events.add(e);
        held.put(t, events);
        if (e.feedsState()) {
            FeatureState.Item before = online.value();
            long last = before == null ? FeatureState.NONE : before.lastMs;
            FeatureState.Item s = FeatureState.alive(before, t, ttlMs);
            FeatureState.applyItem(s, e.eventType, t);
            online.update(s);
            expiry(last, s.lastMs, ctx);
            double[] values = new double[7];
            FeatureState.itemFeatures(s, s.lastMs, values, 0);
            ctx.output(Rows.TAG, Rows.row(Rows.ITEM_VIEW, new String[] {e.itemId}, s.lastMs,
                    FeatureState.ITEM_FEATURES, values, null, null));
        }
        out.collect(e);
    }

    private void expiry(long before, long after, Context ctx) {
        long due = FeatureState.expiryTimer(after, ttlMs, latenessMs);
        if (before == FeatureState.NONE
                || FeatureState.expiryTimer(before, ttlMs, latenessMs) != due) {
            ctx.timerService().registerEventTimeTimer(due);
        }
    }

    @Override
    public void onTimer(long ts, OnTimerContext ctx, Collector<EventRecord> out)
            throws Exception {
        long t = ts - latenessMs;
        List<EventRecord> events = held.get(t);
        if (events != null) {
            held.remove(t);
            FeatureState.Item before = settled.value();
            FeatureState.Item s = FeatureState.alive(before, t, ttlMs);
            double[] asOf = new double[7];
            FeatureState.itemFeatures(s, t, asOf, 0);
            boolean changed = false;
            for (EventRecord e : events) {
                seen.remove(e.eventId);
                if (e.isImpression()) {
                    EventRecord x = new EventRecord();
                    x.eventType = EventRecord.ITEM_FEATURES;
                    x.eventId = e.eventId;
                    x.userId = e.userId;
                    x.itemId = e.itemId;
                    x.eventTime = t;
                    x.features = asOf;
                    out.collect(x);
                }
                if (e.feedsState()) {
                    FeatureState.applyItem(s, e.eventType, t);
                    changed = true;
                }
            }
            if (changed) settled.update(s);
        }
        FeatureState.Item o = online.value();
        if (o != null && FeatureState.expired(o.lastMs, ts, ttlMs, latenessMs)) {
            online.clear();
            settled.clear();
            expiredKeys.inc();
        }
    }

    @Override
    public TypeInformation<EventRecord> getProducedType() {
        return TypeInformation.of(EventRecord.class);
    }
}

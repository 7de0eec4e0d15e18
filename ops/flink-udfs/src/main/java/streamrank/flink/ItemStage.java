package streamrank.flink;

import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
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
 * ({@code features.state.alive}); a rounded timer ({@link FeatureState#expiryTimer}) frees
 * it once no acceptable event can see it.
 *
 * <p>All of an item's state is one value ({@link Held}): one state lookup per event and per
 * timer, and one entry per item in each checkpoint. The events not yet settled are kept in
 * (time, arrival) order; their IDs are the ones a repeat is checked against. One event-time
 * timer is due per item at a time, at its earliest unsettled millisecond plus the lateness;
 * each firing registers the next.
 *
 * <p>Timers: Flink's watermark is the reference's minus 1 ms (see {@link EagerWatermarks}), so
 * a timer at {@code t + lateness} fires exactly when the reference's {@code t + lateness <
 * watermark} holds.
 */
public class ItemStage extends KeyedProcessFunction<String, EventRecord, EventRecord>
        implements ResultTypeQueryable<EventRecord> {
    private final long latenessMs;
    private final long ttlMs;
    private transient ValueState<Held> state;
    private transient Counter duplicates;
    private transient Counter expiredKeys;

    /** One item's keyed state. */
    public static class Held {
        /** Every new event applied on arrival (null: none that feeds state yet). */
        public FeatureState.Item online;
        /** The settled events applied in event-time order. */
        public FeatureState.Item settled;
        /** The events not yet settled, in (time, arrival) order. */
        public List<EventRecord> events = new ArrayList<>();

        public Held() {}
    }

    public ItemStage(long latenessMs, long ttlMs) {
        this.latenessMs = latenessMs;
        this.ttlMs = ttlMs;
    }

    @Override
    public void open(OpenContext ctx) {
        state = getRuntimeContext().getState(new ValueStateDescriptor<>("item", Held.class));
        duplicates = getRuntimeContext().getMetricGroup().counter("duplicates");
        expiredKeys = getRuntimeContext().getMetricGroup().counter("expired_keys");
    }

    @Override
    public void processElement(EventRecord e, Context ctx, Collector<EventRecord> out)
            throws Exception {
        Held h = state.value();
        if (h == null) h = new Held();
        for (EventRecord held : h.events) {
            if (held.eventId.equals(e.eventId)) {
                duplicates.inc();
                return;
            }
        }
        long t = e.eventTime;
        int i = h.events.size();
        while (i > 0 && h.events.get(i - 1).eventTime > t) i--;
        h.events.add(i, e);
        if (i == 0) ctx.timerService().registerEventTimeTimer(t + latenessMs);
        if (e.feedsState()) {
            long last = h.online == null ? FeatureState.NONE : h.online.lastMs;
            FeatureState.Item s = FeatureState.alive(h.online, t, ttlMs);
            FeatureState.applyItem(s, e.eventType, t);
            h.online = s;
            expiry(last, s.lastMs, ctx);
            double[] values = new double[7];
            FeatureState.itemFeatures(s, s.lastMs, values, 0);
            ctx.output(Rows.TAG, Rows.row(Rows.ITEM_VIEW, new String[] {e.itemId}, s.lastMs,
                    FeatureState.ITEM_FEATURES, values, null, null));
        }
        state.update(h);
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
        Held h = state.value();
        if (h == null) return;
        int n = 0;
        while (n < h.events.size() && h.events.get(n).eventTime + latenessMs <= ts) {
            n = settle(h, n, out);
        }
        h.events.subList(0, n).clear();
        if (h.online != null && FeatureState.expired(h.online.lastMs, ts, ttlMs, latenessMs)) {
            h.online = null;
            h.settled = null;
            expiredKeys.inc();
        }
        if (!h.events.isEmpty()) {
            ctx.timerService().registerEventTimeTimer(h.events.get(0).eventTime + latenessMs);
        }
        if (h.online == null && h.settled == null && h.events.isEmpty()) state.clear();
        else state.update(h);
    }

    /** Settles the held events of the millisecond of {@code h.events[from]}: its impressions
     *  get the settled features as of that millisecond, then its events are applied; returns
     *  the index after them. */
    private int settle(Held h, int from, Collector<EventRecord> out) {
        long t = h.events.get(from).eventTime;
        FeatureState.Item s = FeatureState.alive(h.settled, t, ttlMs);
        double[] asOf = new double[7];
        FeatureState.itemFeatures(s, t, asOf, 0);
        boolean changed = false;
        int k = from;
        for (; k < h.events.size() && h.events.get(k).eventTime == t; k++) {
            EventRecord e = h.events.get(k);
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
        if (changed) h.settled = s;
        return k;
    }

    @Override
    public TypeInformation<EventRecord> getProducedType() {
        return TypeInformation.of(EventRecord.class);
    }
}

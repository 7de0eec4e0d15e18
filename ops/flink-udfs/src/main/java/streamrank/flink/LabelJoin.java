package streamrank.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * Keyed by user: the label join of {@code features.labels.LabelJoiner} for the user's
 * impressions, emitting each finished training example as {@code connectors.examples}
 * JSON. Settling: a click or purchase at {@code t} is matched once the watermark passes
 * {@code t + lateness + out-of-orderness}; an impression is finished once it passes
 * {@code t + window + lateness + out-of-orderness} ({@code wait_ms}), event-time timers at
 * those times (Flink's watermark is the reference's minus 1 ms, see {@link EagerWatermarks},
 * so a timer at {@code t} fires exactly when the reference's {@code t < watermark} holds).
 * Within one firing, labels are matched before impressions are finished, each in (time,
 * arrival) order, as in the reference. An impression's item features arrive as an
 * {@link EventRecord#ITEM_FEATURES} record once the item stage has settled them (at
 * {@code t + lateness}, before the impression is finished).
 */
public class LabelJoin extends KeyedProcessFunction<String, EventRecord, byte[]>
        implements ResultTypeQueryable<byte[]> {
    private final long windowMs;
    private final long lagMs;
    private final long labelWaitMs;
    private final long waitMs;
    private transient ValueState<JoinState> state;
    private transient Counter examples, clicksJoined, purchasesJoined,
            unmatchedClicks, unmatchedPurchases;

    /** An impression waiting for its labels. */
    public static class Pending {
        public EventRecord event;
        public long seq;
        public int click;
        public int purchase;

        public Pending() {}
    }

    /** A label waiting for the watermark. */
    public static class Label {
        public EventRecord event;
        public long seq;

        public Label() {}
    }

    /** One user's join state (lists and maps as interfaces: Flink serializes them itself). */
    public static class JoinState {
        public long seq;
        /** Pending impressions in (time, seq) order. */
        public List<Pending> pending = new ArrayList<>();
        /** Waiting labels in (time, seq) order. */
        public List<Label> labels = new ArrayList<>();
        /** The seq of the latest pending impression of each (request, item). Keyed state
         *  holds no object twice: a copy of the state (checkpoints) would split it. */
        public Map<String, Long> byRequest = new HashMap<>();

        public JoinState() {}

        boolean empty() { return pending.isEmpty() && labels.isEmpty(); }
    }

    public LabelJoin(long windowMs, long allowedLatenessMs, long outOfOrdernessMs) {
        this.windowMs = windowMs;
        this.lagMs = outOfOrdernessMs;
        this.labelWaitMs = allowedLatenessMs + outOfOrdernessMs;
        this.waitMs = windowMs + labelWaitMs;
    }

    @Override
    public void open(OpenContext ctx) {
        state = getRuntimeContext().getState(
                new ValueStateDescriptor<>("label-join", JoinState.class));
        MetricGroup m = getRuntimeContext().getMetricGroup();
        examples = m.counter("examples");
        clicksJoined = m.counter("clicks_joined");
        purchasesJoined = m.counter("purchases_joined");
        unmatchedClicks = m.counter("unmatched_clicks");
        unmatchedPurchases = m.counter("unmatched_purchases");
    }

    private static String requestKey(String request, String item) {
        return request + '\u0000' + item;
    }

    @Override
    public void processElement(EventRecord e, Context ctx, Collector<byte[]> out)
            throws Exception {
        JoinState s = state.value();
        if (s == null) s = new JoinState();
        if (e.isItemFeatures()) {
            for (int k = s.pending.size() - 1; k >= 0; k--) {
                EventRecord p = s.pending.get(k).event;
                if (p.eventId.equals(e.eventId) && p.itemId.equals(e.itemId)) {
                    System.arraycopy(e.features, 0, p.features, FeatureState.ITEM_AT, 7);
                    state.update(s);
                    break;
                }
            }
            return;
        }
        long seq = s.seq++;
        if (e.isImpression()) {
            Pending p = new Pending();
            p.event = e;
            p.seq = seq;
            int i = s.pending.size();
            while (i > 0 && s.pending.get(i - 1).event.eventTime > e.eventTime) i--;
            s.pending.add(i, p);
            if (e.requestId != null) s.byRequest.put(requestKey(e.requestId, e.itemId), seq);
            ctx.timerService().registerEventTimeTimer(e.eventTime + waitMs);
        } else {
            Label l = new Label();
            l.event = e;
            l.seq = seq;
            int i = s.labels.size();
            while (i > 0 && s.labels.get(i - 1).event.eventTime > e.eventTime) i--;
            s.labels.add(i, l);
            ctx.timerService().registerEventTimeTimer(e.eventTime + labelWaitMs);
        }
        state.update(s);
    }

    @Override
    public void onTimer(long ts, OnTimerContext ctx, Collector<byte[]> out) throws Exception {
        JoinState s = state.value();
        if (s == null) return;
        long w = ctx.timerService().currentWatermark();
        int n = 0;
        while (n < s.labels.size() && s.labels.get(n).event.eventTime + labelWaitMs <= w) n++;
        for (int k = 0; k < n; k++) label(s, s.labels.get(k).event);
        s.labels.subList(0, n).clear();
        n = 0;
        while (n < s.pending.size() && s.pending.get(n).event.eventTime + waitMs <= w) n++;
        for (int k = 0; k < n; k++) {
            Pending p = s.pending.get(k);
            finish(s, p);
            out.collect(example(p));
            examples.inc();
        }
        s.pending.subList(0, n).clear();
        if (s.empty()) state.clear();
        else state.update(s);
    }

    private Pending match(JoinState s, EventRecord e) {
        long t = e.eventTime;
        if ("click".equals(e.eventType) && e.requestId != null) {
            Pending p = pendingOf(s, s.byRequest.get(requestKey(e.requestId, e.itemId)));
            return p != null && -lagMs <= t - p.event.eventTime && t - p.event.eventTime <= windowMs
                    ? p : null;
        }
        for (int k = s.pending.size() - 1; k >= 0; k--) {
            Pending p = s.pending.get(k);
            if (p.event.itemId.equals(e.itemId) && p.event.eventTime <= t) {
                return t - p.event.eventTime <= windowMs ? p : null;
            }
        }
        return null;
    }

    private static Pending pendingOf(JoinState s, Long seq) {
        if (seq == null) return null;
        for (Pending p : s.pending) {
            if (p.seq == seq) return p;
        }
        return null;
    }

    private void label(JoinState s, EventRecord e) {
        Pending p = match(s, e);
        boolean click = "click".equals(e.eventType);
        if (p != null) {
            if (click) {
                p.click = 1;
                clicksJoined.inc();
            } else {
                p.purchase = 1;
                purchasesJoined.inc();
            }
        } else if (click) {
            unmatchedClicks.inc();
        } else {
            unmatchedPurchases.inc();
        }
    }

    private void finish(JoinState s, Pending p) {
        EventRecord e = p.event;
        if (e.requestId != null) {
            String request = requestKey(e.requestId, e.itemId);
            Long latest = s.byRequest.get(request);
            if (latest != null && latest == p.seq) s.byRequest.remove(request);
        }
    }

    private static final String[] DENSE = dense();

    private static String[] dense() {
        String[] names = new String[FeatureState.DENSE];
        System.arraycopy(FeatureState.USER_FEATURES, 0, names, FeatureState.USER_AT, 6);
        System.arraycopy(FeatureState.ITEM_FEATURES, 0, names, FeatureState.ITEM_AT, 7);
        System.arraycopy(FeatureState.USER_CATEGORY_FEATURES, 0, names,
                FeatureState.USER_CATEGORY_AT, 4);
        return names;
    }

    /** {@code connectors.examples.encode_example} of a finished impression. */
    static byte[] example(Pending p) {
        EventRecord e = p.event;
        StringBuilder s = new StringBuilder(700);
        s.append("{\"example_id\":");
        Json.string(s, e.eventId).append(",\"request_id\":");
        Json.nullableString(s, e.requestId).append(",\"user_id\":");
        Json.string(s, e.userId).append(",\"item_id\":");
        Json.string(s, e.itemId).append(",\"category_id\":");
        Json.nullableString(s, e.categoryId).append(",\"position\":");
        s.append(e.position == null ? "null" : e.position.toString());
        s.append(",\"event_time\":").append(e.eventTime);
        s.append(",\"click\":").append(p.click).append(",\"purchase\":").append(p.purchase);
        s.append(",\"features\":{");
        for (int k = 0; k < DENSE.length; k++) {
            if (k > 0) s.append(',');
            Json.string(s, DENSE[k]).append(':');
            Json.number(s, e.features[k]);
        }
        s.append("},\"price\":");
        if (e.price == null || e.price.isNaN() || e.price.isInfinite()) s.append("null");
        else Json.number(s, e.price);
        list(s.append(",\"recent_items\":"), e.recentItems);
        list(s.append(",\"recent_categories\":"), e.recentCategories);
        return Json.bytes(s.append('}'));
    }

    private static void list(StringBuilder s, String[] values) {
        s.append('[');
        if (values != null) {
            for (int k = 0; k < values.length; k++) {
                if (k > 0) s.append(',');
                Json.string(s, values[k]);
            }
        }
        s.append(']');
    }

    @Override
    public TypeInformation<byte[]> getProducedType() {
        return PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO;
    }
}

package streamrank.flink;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInfo;
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
 * those times, one due per user at a time: its earliest (Flink's watermark is the
 * reference's minus 1 ms, see {@link EagerWatermarks}, so a timer at {@code t} fires exactly
 * when the reference's {@code t < watermark} holds).
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

    /** An impression waiting for its labels and item features: what the join reads, and
     *  its example's JSON already written but for the labels and the item features (byte
     *  arrays are cheap to copy and to checkpoint). */
    @TypeInfo(Codecs.PendingCodec.Factory.class)
    public static class Pending {
        public String eventId;
        public String itemId;
        public String requestId;
        public long time;
        public long seq;
        public int click;
        public int purchase;
        /** {@code {"example_id":...,"event_time":T} (unclosed). */
        public byte[] head;
        /** The user features' members. */
        public byte[] user;
        /** The item features, once the item stage has settled them (zeros until then). */
        public double[] item = new double[7];
        /** The user x category features' members, then price and recent clicks, closed. */
        public byte[] tail;

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
                Pending p = s.pending.get(k);
                if (p.eventId.equals(e.eventId) && p.itemId.equals(e.itemId)) {
                    System.arraycopy(e.features, 0, p.item, 0, 7);
                    state.update(s);
                    break;
                }
            }
            return;
        }
        long seq = s.seq++;
        long due = due(s);
        if (e.isImpression()) {
            Pending p = pending(e, seq);
            int i = s.pending.size();
            while (i > 0 && s.pending.get(i - 1).time > e.eventTime) i--;
            s.pending.add(i, p);
            if (e.requestId != null) s.byRequest.put(requestKey(e.requestId, e.itemId), seq);
        } else {
            Label l = new Label();
            l.event = e;
            l.seq = seq;
            int i = s.labels.size();
            while (i > 0 && s.labels.get(i - 1).event.eventTime > e.eventTime) i--;
            s.labels.add(i, l);
        }
        if (due(s) < due) ctx.timerService().registerEventTimeTimer(due(s));
        state.update(s);
    }

    /** When the user's next label or impression is due (one timer per user at a time). */
    private long due(JoinState s) {
        long due = s.pending.isEmpty() ? Long.MAX_VALUE : s.pending.get(0).time + waitMs;
        return s.labels.isEmpty() ? due
                : Math.min(due, s.labels.get(0).event.eventTime + labelWaitMs);
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
        while (n < s.pending.size() && s.pending.get(n).time + waitMs <= w) n++;
        for (int k = 0; k < n; k++) {
            Pending p = s.pending.get(k);
            finish(s, p);
            out.collect(example(p));
            examples.inc();
        }
        s.pending.subList(0, n).clear();
        if (s.empty()) {
            state.clear();
        } else {
            state.update(s);
            ctx.timerService().registerEventTimeTimer(due(s));
        }
    }

    private Pending match(JoinState s, EventRecord e) {
        long t = e.eventTime;
        if ("click".equals(e.eventType) && e.requestId != null) {
            Pending p = pendingOf(s, s.byRequest.get(requestKey(e.requestId, e.itemId)));
            return p != null && -lagMs <= t - p.time && t - p.time <= windowMs ? p : null;
        }
        for (int k = s.pending.size() - 1; k >= 0; k--) {
            Pending p = s.pending.get(k);
            if (p.itemId.equals(e.itemId) && p.time <= t) {
                return t - p.time <= windowMs ? p : null;
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
        if (p.requestId != null) {
            String request = requestKey(p.requestId, p.itemId);
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

    /** A pending impression of {@code e} (an impression with its user side), its example's
     *  JSON written but for the labels and the item features. */
    static Pending pending(EventRecord e, long seq) {
        Pending p = new Pending();
        p.eventId = e.eventId;
        p.itemId = e.itemId;
        p.requestId = e.requestId;
        p.time = e.eventTime;
        p.seq = seq;
        StringBuilder s = new StringBuilder(400);
        s.append("{\"example_id\":");
        Json.string(s, e.eventId).append(",\"request_id\":");
        Json.nullableString(s, e.requestId).append(",\"user_id\":");
        Json.string(s, e.userId).append(",\"item_id\":");
        Json.string(s, e.itemId).append(",\"category_id\":");
        Json.nullableString(s, e.categoryId).append(",\"position\":");
        s.append(e.position == null ? "null" : e.position.toString());
        p.head = Json.bytes(s.append(",\"event_time\":").append(e.eventTime));
        p.user = Json.bytes(features(new StringBuilder(200), e.features,
                FeatureState.USER_AT, FeatureState.USER_AT, FeatureState.ITEM_AT, false));
        s.setLength(0);
        features(s, e.features, FeatureState.USER_CATEGORY_AT, FeatureState.USER_CATEGORY_AT,
                FeatureState.DENSE, true);
        s.append("},\"price\":");
        if (e.price == null || e.price.isNaN() || e.price.isInfinite()) s.append("null");
        else Json.number(s, e.price);
        list(s.append(",\"recent_items\":"), e.recentItems);
        list(s.append(",\"recent_categories\":"), e.recentCategories);
        if (e.query != null) Json.string(s.append(",\"query\":"), e.query);
        p.tail = Json.bytes(s.append('}'));
        return p;
    }

    /** The JSON members {@code DENSE[from:to]}, their values from {@code values[at]} on
     *  (each after a comma when {@code comma}, else but the first). */
    private static StringBuilder features(StringBuilder s, double[] values, int at, int from,
                                          int to, boolean comma) {
        for (int k = from; k < to; k++) {
            if (comma || k > from) s.append(',');
            Json.string(s, DENSE[k]).append(':');
            Json.number(s, values[at + k - from]);
        }
        return s;
    }

    /** {@code connectors.examples.encode_example} of a finished impression. */
    static byte[] example(Pending p) {
        StringBuilder s = new StringBuilder(200);
        s.append(",\"click\":").append(p.click).append(",\"purchase\":").append(p.purchase);
        s.append(",\"features\":{");
        byte[] labels = Json.bytes(s);
        byte[] item = Json.bytes(features(new StringBuilder(200), p.item, 0,
                FeatureState.ITEM_AT, FeatureState.USER_CATEGORY_AT, true));
        byte[] out = new byte[p.head.length + labels.length + p.user.length + item.length
                + p.tail.length];
        int at = 0;
        for (byte[] part : new byte[][] {p.head, labels, p.user, item, p.tail}) {
            System.arraycopy(part, 0, out, at, part.length);
            at += part.length;
        }
        return out;
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

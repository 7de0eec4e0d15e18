package streamrank.flink;

import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.metrics.Counter;
import org.apache.flink.metrics.MetricGroup;
import org.apache.flink.streaming.api.functions.ProcessFunction;
import org.apache.flink.util.Collector;
import org.apache.flink.util.OutputTag;

/**
 * Validates raw {@code events} records in one pass ({@link EventParser}): valid, on-time events
 * go on as {@link EventRecord}s; every other record goes to {@link #DEAD_LETTERS} as the
 * dead-letter JSON of {@code connectors.events.dead_letter} (reason, detail, source, the
 * original bytes as text or hex). An event is {@code late} when its time is more than
 * {@code allowedLatenessMs} behind the watermark {@code max event time - out-of-orderness} of
 * the events before it (Flink's watermark is that minus 1 ms, see {@link EagerWatermarks}).
 * Counts {@code valid}, {@code invalid} and {@code reason_<code>} (Flink counters).
 */
public class Validate extends ProcessFunction<byte[], EventRecord>
        implements ResultTypeQueryable<EventRecord> {
    public static final OutputTag<byte[]> DEAD_LETTERS =
            new OutputTag<>("dead-letters",
                    org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);

    private final long minTimeMs;
    private final long maxFutureMs;
    private final int maxBytes;
    private final long allowedLatenessMs;
    private final String topic;
    private transient EventParser parser;
    private transient Counter valid;
    private transient Counter invalid;
    private transient MetricGroup metrics;
    private transient java.util.Map<String, Counter> reasons;

    public Validate(long minTimeMs, long maxFutureMs, int maxBytes, long allowedLatenessMs,
                    String topic) {
        this.minTimeMs = minTimeMs;
        this.maxFutureMs = maxFutureMs;
        this.maxBytes = maxBytes;
        this.allowedLatenessMs = allowedLatenessMs;
        this.topic = topic;
    }

    /** The tag of the dead-letter side output (for PyFlink's gateway). */
    public static OutputTag<byte[]> deadLetters() { return DEAD_LETTERS; }

    @Override
    public void open(org.apache.flink.api.common.functions.OpenContext ctx) {
        parser = new EventParser(minTimeMs, maxFutureMs, maxBytes);
        metrics = getRuntimeContext().getMetricGroup();
        valid = metrics.counter("valid");
        invalid = metrics.counter("invalid");
        reasons = new java.util.HashMap<>();
    }

    @Override
    public void processElement(byte[] raw, Context ctx, Collector<EventRecord> out) {
        EventRecord e;
        try {
            e = parser.parse(raw, System.currentTimeMillis());
        } catch (Rejected r) {
            reject(raw, r.reason, r.detail, ctx);
            return;
        }
        long watermark = ctx.timerService().currentWatermark();
        if (watermark != Long.MIN_VALUE && e.eventTime <= watermark - allowedLatenessMs) {
            long reference = watermark + 1;  // max event time - out-of-orderness
            Long ts = ctx.timestamp();
            String hint = ts != null && ts == e.eventTime ? ""
                    : "; its Kafka timestamp " + ts + " is not its event_time";
            reject(raw, "late", "event_time " + e.eventTime + " is " + (reference - e.eventTime)
                    + " ms behind the watermark " + reference + " (allowed lateness "
                    + allowedLatenessMs + " ms)" + hint, ctx);
            return;
        }
        valid.inc();
        out.collect(e);
    }

    private void reject(byte[] raw, String reason, String detail, Context ctx) {
        invalid.inc();
        reasons.computeIfAbsent(reason, r -> metrics.counter("reason_" + r)).inc();
        // the source reads values only: the record's partition and offset are not known here
        ctx.output(DEAD_LETTERS, deadLetter(raw, reason, detail, topic));
    }

    /** {@code connectors.events.dead_letter}. */
    public static byte[] deadLetter(byte[] raw, String reason, String detail, String source) {
        String original;
        String encoding;
        try {
            original = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(raw)).toString();
            encoding = "utf-8";
        } catch (CharacterCodingException err) {
            original = java.util.HexFormat.of().formatHex(raw);
            encoding = "hex";
        }
        StringBuilder s = new StringBuilder(raw.length * 2 + 128);
        s.append("{\"reason\":");
        Json.string(s, reason).append(",\"detail\":");
        Json.string(s, detail).append(",\"source\":");
        Json.string(s, source).append(",\"original\":");
        Json.string(s, original).append(",\"original_encoding\":");
        Json.string(s, encoding).append('}');
        return Json.bytes(s);
    }

    @Override
    public TypeInformation<EventRecord> getProducedType() {
        return TypeInformation.of(EventRecord.class);
    }
}

package streamrank.flink;

import static org.junit.jupiter.api.Assertions.assertAll;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.zip.GZIPInputStream;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.KeyedOneInputStreamOperatorTestHarness;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.apache.flink.streaming.util.ProcessFunctionTestHarnesses;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/**
 * The Java stages against the golden outputs of the Python reference ({@code tests/golden},
 * written by {@code tests/golden/generate.py}), in process: each stage in Flink's operator test
 * harness, chained by hand as {@code jobs/features.py} wires them (Validate, then keyed by item
 * ItemStage, then keyed by user UserStage and LabelJoin), with the watermarks the job's source
 * makes ({@link EagerWatermarks}: after each record that raises the maximum timestamp, and the
 * end-of-input watermark at the end of the bounded log). One partition, parallelism one: each
 * stage sees its input in the order of the log, as the reference does.
 *
 * <p>Compared with {@code tests/unit/test_golden.py}'s rule: JSON values exactly, but floats to
 * {@link #TOL} (Java's {@code Math.pow} and C's {@code pow} differ in the last bit now and then)
 * and a dead letter's {@code detail} left out (Java words it otherwise than pydantic). Dead
 * letters line for line in order; examples by {@code example_id} (the label join emits them
 * per user on its timers, not in the reference's global order). Rows go through
 * {@link RowCoalescer} (its timer due every {@link #ROWS_PER_INTERVAL} rows, a checkpoint in
 * the middle): per view and key, the rows sent are some of the reference's rows of the key,
 * in its order, and always its last.
 */
class GoldenTest {
    private static final Path GOLDEN =
            Path.of(System.getProperty("golden.dir", "../../tests/golden"));
    private static final double TOL = 1e-12;
    private static final long INTERVAL_MS = 200;
    private static final int ROWS_PER_INTERVAL = 97;
    private static final ObjectMapper JSON = new ObjectMapper();

    /** A raw record and its Kafka timestamp. */
    private record Raw(byte[] value, long timestamp) {}

    /** What the stages wrote: dead letters, item rows, user and user x category rows, examples. */
    private record Outputs(List<byte[]> deadLetters, List<byte[]> itemRows, List<byte[]> userRows,
                           List<byte[]> examples) {}

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"messy", "taobao"})
    void stagesEqualTheReference(String name) throws Exception {
        Path dir = GOLDEN.resolve(name);
        JsonNode settings = JSON.readTree(dir.resolve("settings.json").toFile());
        Outputs got = run(settings, records(dir.resolve("events.jsonl.gz")));
        List<JsonNode> rows = lines(dir.resolve("rows.jsonl.gz"));
        List<JsonNode> itemRows = new ArrayList<>();
        List<JsonNode> userRows = new ArrayList<>();
        for (JsonNode row : rows) {
            (Rows.ITEM_VIEW.equals(row.get("view").asText()) ? itemRows : userRows).add(row);
        }
        List<JsonNode> deadLetters = lines(dir.resolve("dead_letters.jsonl.gz"));
        assertAll(name,
                () -> assertSame("dead letters", without(deadLetters, "detail"),
                        without(parsed(got.deadLetters()), "detail")),
                () -> assertCoalesced("item rows", itemRows, parsed(got.itemRows())),
                () -> assertCoalesced("user rows", userRows, parsed(got.userRows())),
                () -> assertSame("examples", byId(lines(dir.resolve("examples.jsonl.gz"))),
                        byId(parsed(got.examples()))));
    }

    /** The job's stages over {@code log}: its source's watermarks, then each stage in turn
     *  over the whole output (records and watermarks) of the one before: a stage's output
     *  depends on its input sequence only. */
    private static Outputs run(JsonNode s, List<Raw> log) throws Exception {
        long lateness = s.get("allowed_lateness_ms").asLong();
        long ttl = s.get("feature_state_ttl_ms").asLong();
        long lag = s.get("max_out_of_orderness_ms").asLong();
        OneInputStreamOperatorTestHarness<byte[], EventRecord> validate =
                ProcessFunctionTestHarnesses.forProcessFunction(new Validate(
                        s.get("min_event_time_ms").asLong(), s.get("max_future_ms").asLong(),
                        s.get("max_event_bytes").asInt(), lateness,
                        s.get("topic_events").asText()));
        List<Watermark> marks = new ArrayList<>();
        EagerWatermarks<byte[]> source = new EagerWatermarks<>(lag);
        WatermarkOutput out = new WatermarkOutput() {
            @Override
            public void emitWatermark(org.apache.flink.api.common.eventtime.Watermark w) {
                marks.add(new Watermark(w.getTimestamp()));
            }
            @Override public void markIdle() {}
            @Override public void markActive() {}
        };
        for (Raw r : log) {  // the source emits a record, then the watermark it raised
            validate.processElement(r.value(), r.timestamp());
            source.onEvent(r.value(), r.timestamp(), out);
            for (Watermark w : marks) validate.processWatermark(w);
            marks.clear();
        }
        validate.processWatermark(Watermark.MAX_WATERMARK);  // the end of a bounded input
        List<byte[]> dead = values(validate.getSideOutput(Validate.DEAD_LETTERS));

        var items = keyed(new ItemStage(lateness, ttl), Keys.item(), validate.getOutput());
        var users = keyed(new UserStage(lateness, ttl), Keys.user(), items.getOutput());
        var join = keyed(new LabelJoin(s.get("attribution_window_ms").asLong(), lateness, lag),
                Keys.user(), users.getOutput());
        Outputs got = new Outputs(dead, rowValues(items), rowValues(users),
                values(join.getOutput()));
        for (AutoCloseable h : List.of(validate, items, users, join)) h.close();
        return got;
    }

    /** A keyed stage run over a stage's output (its records and watermarks, in order). */
    @SuppressWarnings("unchecked")
    private static <OUT> KeyedOneInputStreamOperatorTestHarness<String, EventRecord, OUT> keyed(
            KeyedProcessFunction<String, EventRecord, OUT> fn, KeySelector<EventRecord, String> key,
            Collection<Object> input) throws Exception {
        var h = ProcessFunctionTestHarnesses.forKeyedProcessFunction(fn, key, Types.STRING);
        for (Object o : input) {
            if (o instanceof StreamRecord<?> r) h.processElement((StreamRecord<EventRecord>) r);
            else if (o instanceof Watermark w) h.processWatermark(w);
        }
        return h;
    }

    /** The values of a stage's rows through {@link RowCoalescer}, after checking each Kafka
     *  key is {@code [view, *key]}. */
    private static List<byte[]> rowValues(KeyedOneInputStreamOperatorTestHarness<?, ?, ?> h)
            throws Exception {
        var sent = new OneInputStreamOperatorTestHarness<Rows.Row, Tuple2<byte[], byte[]>>(
                new RowCoalescer(INTERVAL_MS));
        sent.open();
        List<StreamRecord<Rows.Row>> made = new ArrayList<>(h.getSideOutput(Rows.TAG));
        for (int k = 0; k < made.size(); k++) {
            sent.processElement(made.get(k));
            if (k % ROWS_PER_INTERVAL == ROWS_PER_INTERVAL - 1) {
                sent.setProcessingTime(sent.getProcessingTime() + INTERVAL_MS);
            }
            if (k == made.size() / 2) sent.prepareSnapshotPreBarrier(1);
        }
        sent.endInput();
        List<byte[]> out = new ArrayList<>();
        for (Object o : sent.getOutput()) {
            @SuppressWarnings("unchecked")
            Tuple2<byte[], byte[]> r = ((StreamRecord<Tuple2<byte[], byte[]>>) o).getValue();
            JsonNode value = JSON.readTree(r.f1);
            JsonNode key = JSON.createArrayNode().add(value.get("view")).addAll(
                    (ArrayNode) value.get("key"));
            assertEquals(key, JSON.readTree(r.f0));
            out.add(r.f1);
        }
        sent.close();
        return out;
    }

    @SuppressWarnings("unchecked")
    private static List<byte[]> values(Collection<?> output) {
        List<byte[]> out = new ArrayList<>();
        for (Object o : output == null ? List.of() : output) {  // null: nothing was emitted
            if (o instanceof StreamRecord<?> r) out.add(((StreamRecord<byte[]>) r).getValue());
        }
        return out;
    }

    private static List<Raw> records(Path path) throws IOException {
        List<Raw> out = new ArrayList<>();
        for (JsonNode r : lines(path)) {
            byte[] value = r.has("value") ? r.get("value").asText().getBytes(StandardCharsets.UTF_8)
                    : Base64.getDecoder().decode(r.get("value_base64").asText());
            out.add(new Raw(value, r.get("timestamp").asLong()));
        }
        return out;
    }

    private static List<JsonNode> lines(Path path) throws IOException {
        try (InputStream in = new GZIPInputStream(Files.newInputStream(path))) {
            String text = new String(in.readAllBytes(), StandardCharsets.UTF_8);
            List<JsonNode> out = new ArrayList<>();
            for (String line : text.split("\n")) {
                if (!line.isEmpty()) out.add(JSON.readTree(line));
            }
            return out;
        }
    }

    private static List<JsonNode> parsed(List<byte[]> values) throws IOException {
        List<JsonNode> out = new ArrayList<>();
        for (byte[] v : values) out.add(JSON.readTree(v));
        return out;
    }

    private static List<JsonNode> without(List<JsonNode> nodes, String field) {
        for (JsonNode n : nodes) ((ObjectNode) n).remove(field);
        return nodes;
    }

    private static Map<String, JsonNode> byId(List<JsonNode> examples) {
        Map<String, JsonNode> out = new LinkedHashMap<>();
        for (JsonNode x : examples) {
            assertNull(out.put(x.get("example_id").asText(), x),
                    "two examples " + x.get("example_id"));
        }
        return out;
    }

    private static void assertSame(String what, List<JsonNode> want, List<JsonNode> got) {
        List<String> bad = new ArrayList<>();
        if (want.size() != got.size()) bad.add(got.size() + " != " + want.size() + " lines");
        for (int k = 0; k < Math.min(want.size(), got.size()); k++) {
            differences(want.get(k), got.get(k), "[" + k + "]", bad);
        }
        report(what, bad);
    }

    /** Per view and key: {@code got}'s rows are some of {@code want}'s, in order, with its
     *  last. */
    private static void assertCoalesced(String what, List<JsonNode> want, List<JsonNode> got) {
        Map<JsonNode, List<JsonNode>> wanted = byKey(want);
        Map<JsonNode, List<JsonNode>> sent = byKey(got);
        List<String> bad = new ArrayList<>();
        if (!wanted.keySet().equals(sent.keySet())) {
            bad.add("keys differ: " + sent.size() + " != " + wanted.size());
        }
        for (Map.Entry<JsonNode, List<JsonNode>> w : wanted.entrySet()) {
            List<JsonNode> rows = w.getValue();
            List<JsonNode> g = sent.getOrDefault(w.getKey(), List.of());
            int at = 0;
            for (JsonNode row : g) {
                while (at < rows.size() && differs(rows.get(at), row)) at++;
                if (at++ == rows.size()) {
                    bad.add(w.getKey() + ": " + row + " is none of the reference's next rows");
                    break;
                }
            }
            if (!g.isEmpty()) {
                differences(rows.get(rows.size() - 1), g.get(g.size() - 1),
                        w.getKey() + " last", bad);
            }
        }
        report(what, bad);
        assertTrue(got.size() <= want.size(), what + ": more rows than the reference");
    }

    private static Map<JsonNode, List<JsonNode>> byKey(List<JsonNode> rows) {
        Map<JsonNode, List<JsonNode>> out = new LinkedHashMap<>();
        for (JsonNode r : rows) {
            JsonNode key = JSON.createArrayNode().add(r.get("view")).addAll((ArrayNode) r.get("key"));
            out.computeIfAbsent(key, k -> new ArrayList<>()).add(r);
        }
        return out;
    }

    /** Whether {@code want} and {@code got} differ (as {@link #differences}). */
    private static boolean differs(JsonNode want, JsonNode got) {
        List<String> bad = new ArrayList<>();
        differences(want, got, "", bad);
        return !bad.isEmpty();
    }

    private static void assertSame(String what, Map<String, JsonNode> want,
                                   Map<String, JsonNode> got) {
        List<String> bad = new ArrayList<>();
        if (!want.keySet().equals(got.keySet())) {
            bad.add("ids differ: " + got.size() + " != " + want.size());
        }
        for (Map.Entry<String, JsonNode> w : want.entrySet()) {
            JsonNode g = got.get(w.getKey());
            if (g != null) differences(w.getValue(), g, w.getKey(), bad);
        }
        report(what, bad);
    }

    private static void report(String what, List<String> bad) {
        assertTrue(bad.isEmpty(), what + ": " + bad.size() + " differences, first: "
                + bad.subList(0, Math.min(5, bad.size())));
    }

    /** {@code test_golden.differences}: JSON values equal, floats to {@link #TOL}. */
    private static void differences(JsonNode want, JsonNode got, String path, List<String> bad) {
        if (want.getNodeType() != got.getNodeType()
                || want.isIntegralNumber() != got.isIntegralNumber()) {
            bad.add(path + ": " + got + " != " + want);
        } else if (want.isFloatingPointNumber()) {
            double w = want.doubleValue(), g = got.doubleValue();
            double scale = Math.max(Math.abs(w), Math.abs(g));
            if (w != g && Math.abs(w - g) > Math.max(TOL, TOL * scale)) {
                bad.add(path + ": " + g + " != " + w);
            }
        } else if (want.isIntegralNumber()) {
            if (!want.bigIntegerValue().equals(got.bigIntegerValue())) {
                bad.add(path + ": " + got + " != " + want);
            }
        } else if (want.isObject()) {
            Set<String> names = new TreeSet<>();
            want.fieldNames().forEachRemaining(names::add);
            Set<String> gotNames = new TreeSet<>();
            got.fieldNames().forEachRemaining(gotNames::add);
            if (!names.equals(gotNames)) {
                bad.add(path + ": keys " + gotNames + " != " + names);
                return;
            }
            for (String n : names) differences(want.get(n), got.get(n), path + "." + n, bad);
        } else if (want.isArray()) {
            if (want.size() != got.size()) {
                bad.add(path + ": " + got + " != " + want);
                return;
            }
            Iterator<JsonNode> g = got.elements();
            int k = 0;
            for (JsonNode w : want) differences(w, g.next(), path + "[" + k++ + "]", bad);
        } else if (!want.equals(got)) {
            bad.add(path + ": " + got + " != " + want);
        }
    }
}

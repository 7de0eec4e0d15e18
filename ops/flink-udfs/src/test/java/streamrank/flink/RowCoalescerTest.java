package streamrank.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.streaming.util.OneInputStreamOperatorTestHarness;
import org.junit.jupiter.api.Test;

/** {@link RowCoalescer}: each key's newest row once per interval, none held across a
 *  checkpoint or past the end of the input. */
class RowCoalescerTest {
    private static final String[] NAMES = {"n"};

    private static StreamRecord<Rows.Row> row(String view, String key, double value, long ts) {
        return new StreamRecord<>(Rows.row(view, new String[] {key}, ts, NAMES,
                new double[] {value}, null, null), ts);
    }

    /** What was sent since the last call, as "view/key=value@timestamp". */
    private static List<String> sent(
            OneInputStreamOperatorTestHarness<Rows.Row, Tuple2<byte[], byte[]>> h) {
        List<String> out = new ArrayList<>();
        for (Object o : h.getOutput()) {
            @SuppressWarnings("unchecked")
            StreamRecord<Tuple2<byte[], byte[]>> r = (StreamRecord<Tuple2<byte[], byte[]>>) o;
            String v = new String(r.getValue().f1, StandardCharsets.UTF_8);
            String key = new String(r.getValue().f0, StandardCharsets.UTF_8);
            out.add(key + v.substring(v.indexOf("\"n\":") + 4, v.indexOf('}')) + "@"
                    + r.getTimestamp());
        }
        h.getOutput().clear();
        return out;
    }

    @Test
    void newestRowPerKeyPerInterval() throws Exception {
        var h = new OneInputStreamOperatorTestHarness<Rows.Row, Tuple2<byte[], byte[]>>(
                new RowCoalescer(200));
        h.open();
        h.setProcessingTime(1_000);
        h.processElement(row("v", "a", 1, 10));
        h.processElement(row("v", "b", 2, 11));
        h.processElement(row("w", "a", 3, 12));
        h.processElement(row("v", "a", 4, 13));
        h.setProcessingTime(1_199);
        assertEquals(List.of(), sent(h));
        h.setProcessingTime(1_200);
        assertEquals(List.of("[\"v\",\"a\"]4.0@13", "[\"v\",\"b\"]2.0@11", "[\"w\",\"a\"]3.0@12"),
                sent(h));
        h.setProcessingTime(5_000);  // nothing waiting: no timer, nothing sent
        assertEquals(List.of(), sent(h));
        h.processElement(row("v", "a", 5, 14));
        h.prepareSnapshotPreBarrier(1);  // before the barrier
        assertEquals(List.of("[\"v\",\"a\"]5.0@14"), sent(h));
        h.processElement(row("v", "b", 6, 15));
        h.processElement(row("v", "b", 7, 16));
        h.endInput();
        assertEquals(List.of("[\"v\",\"b\"]7.0@16"), sent(h));
        h.setProcessingTime(6_000);
        assertEquals(List.of(), sent(h));
        h.close();
    }

    @Test
    void zeroIntervalSendsEachRow() throws Exception {
        var h = new OneInputStreamOperatorTestHarness<Rows.Row, Tuple2<byte[], byte[]>>(
                new RowCoalescer(0));
        h.open();
        h.processElement(row("v", "a", 1, 10));
        h.processElement(row("v", "a", 2, 11));
        assertEquals(List.of("[\"v\",\"a\"]1.0@10", "[\"v\",\"a\"]2.0@11"), sent(h));
        h.close();
    }
}

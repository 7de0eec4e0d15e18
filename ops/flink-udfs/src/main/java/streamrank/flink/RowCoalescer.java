package streamrank.flink;

import java.util.LinkedHashMap;
import java.util.Map;

import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.metrics.Counter;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.SingleOutputStreamOperator;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;

/**
 * Sends each key's newest row of a stage at most once per {@code intervalMs}: a row replaces
 * the one of its view and key still waiting; a processing-time timer, set when the first row
 * of an interval arrives, encodes and sends the waiting rows ({@link Rows#encode}) in the order
 * their keys first changed. Chained to its stage: rows pass by reference, and a row replaced
 * before its send is never encoded.
 *
 * <p>Nothing waits across a checkpoint (the waiting rows are sent before the barrier, in
 * {@link #prepareSnapshotPreBarrier}, so a restored job has sent the newest row of every key
 * its state has applied) nor past the end of a bounded input. So the rows of a key on
 * {@code features.rows} are some of the rows its stage made, in order, always with its last.
 */
public class RowCoalescer extends AbstractStreamOperator<Tuple2<byte[], byte[]>>
        implements OneInputStreamOperator<Rows.Row, Tuple2<byte[], byte[]>>, BoundedOneInput {
    private final long intervalMs;
    /** The newest row of each key waiting, with its record's timestamp. */
    private transient Map<String, StreamRecord<Rows.Row>> waiting;
    private transient boolean timerSet;
    private transient Counter replaced;

    public RowCoalescer(long intervalMs) {
        if (intervalMs < 0) throw new IllegalArgumentException("intervalMs < 0: " + intervalMs);
        this.intervalMs = intervalMs;
    }

    /** {@code rows} coalesced per {@code intervalMs} (0: each row sent at once), chained to
     *  the operator that makes them (for PyFlink's gateway). */
    public static SingleOutputStreamOperator<Tuple2<byte[], byte[]>> coalesce(
            DataStream<Rows.Row> rows, long intervalMs, String name) {
        return rows.transform(name, Rows.TYPE, new RowCoalescer(intervalMs));  // chains: ALWAYS
    }

    @Override
    public void open() throws Exception {
        super.open();
        waiting = new LinkedHashMap<>();
        replaced = getMetricGroup().counter("rows_replaced");
    }

    @Override
    public void processElement(StreamRecord<Rows.Row> record) throws Exception {
        Rows.Row row = record.getValue();
        if (intervalMs == 0) {
            output.collect(record.replace(Rows.encode(row)));
            return;
        }
        if (waiting.put(row.id(), record.copy(row)) != null) replaced.inc();
        if (!timerSet) {
            timerSet = true;
            long now = getProcessingTimeService().getCurrentProcessingTime();
            getProcessingTimeService().registerTimer(now + intervalMs, t -> {
                timerSet = false;
                send();
            });
        }
    }

    /** Encodes and sends every waiting row. */
    private void send() {
        for (StreamRecord<Rows.Row> r : waiting.values()) {
            output.collect(r.replace(Rows.encode(r.getValue())));
        }
        waiting.clear();
    }

    @Override
    public void prepareSnapshotPreBarrier(long checkpointId) throws Exception {
        super.prepareSnapshotPreBarrier(checkpointId);
        send();
    }

    @Override
    public void endInput() {
        send();
    }
}

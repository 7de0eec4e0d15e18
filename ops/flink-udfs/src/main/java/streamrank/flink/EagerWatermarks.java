package streamrank.flink;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkGeneratorSupplier;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;

/**
 * Bounded out-of-orderness watermarks emitted with the event that advances them (Flink's own
 * generator emits them periodically, every 200 ms): {@code max timestamp - outOfOrderness - 1}
 * right after each event that raises the maximum. So lateness and the label join's emission
 * follow each event as in the Python reference ({@code features.labels.LabelJoiner}), whatever
 * the arrival rate. Used per Kafka partition by the source.
 */
public class EagerWatermarks<T> implements WatermarkGenerator<T> {
    private final long outOfOrdernessMs;
    private long max = Long.MIN_VALUE;

    public EagerWatermarks(long outOfOrdernessMs) { this.outOfOrdernessMs = outOfOrdernessMs; }

    @Override
    public void onEvent(T event, long timestamp, WatermarkOutput output) {
        if (timestamp > max) {
            max = timestamp;
            output.emitWatermark(new Watermark(max - outOfOrdernessMs - 1));
        }
    }

    @Override
    public void onPeriodicEmit(WatermarkOutput output) {}

    /** The strategy: these watermarks, Kafka timestamps, idle partitions after {@code idleMs}. */
    public static <T> WatermarkStrategy<T> strategy(long outOfOrdernessMs, long idleMs) {
        WatermarkGeneratorSupplier<T> gen = ctx -> new EagerWatermarks<>(outOfOrdernessMs);
        return WatermarkStrategy.<T>forGenerator(gen)
                .withIdleness(java.time.Duration.ofMillis(idleMs));
    }
}

package streamrank.flink;

import java.util.Arrays;

/**
 * An item's state after each of its recent milliseconds ({@code features.examples.ItemTimeline}),
 * so that an impression at {@code t} reads the item as of its events before {@code t}.
 * Versions older than {@code keepMs} before the latest one are dropped but the newest of them,
 * kept as the base (time {@link #BASE_MS}). The latest version holds every event. Arrays, not
 * lists, so that Flink serializes it as a POJO in checkpoints (lists would go through Kryo).
 */
public class ItemTimeline {
    public static final long BASE_MS = -1;
    private static final FeatureState.Item NO_ITEM = new FeatureState.Item();

    public long[] times = new long[0];
    public FeatureState.Item[] states = new FeatureState.Item[0];

    public ItemTimeline() {}

    private int bisectLeft(long t) {
        int lo = 0, hi = times.length;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (times[mid] < t) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    /** The item's state after its events earlier than {@code t} (do not modify). */
    public FeatureState.Item before(long t) {
        int i = bisectLeft(t);
        return i > 0 ? states[i - 1] : NO_ITEM;
    }

    /** The state after every event. */
    public FeatureState.Item latest() { return states[states.length - 1]; }

    /** Applies one event at {@code t} to every version from {@code t} on. */
    public void apply(String type, long t, long keepMs) {
        int i = bisectLeft(t);
        int n = times.length;
        if (i == n || times[i] != t) {
            long[] ts = new long[n + 1];
            FeatureState.Item[] ss = new FeatureState.Item[n + 1];
            System.arraycopy(times, 0, ts, 0, i);
            System.arraycopy(states, 0, ss, 0, i);
            System.arraycopy(times, i, ts, i + 1, n - i);
            System.arraycopy(states, i, ss, i + 1, n - i);
            ts[i] = t;
            ss[i] = i > 0 ? states[i - 1].copy() : new FeatureState.Item();
            times = ts;
            states = ss;
        }
        for (int j = i; j < states.length; j++) FeatureState.applyItem(states[j], type, t);
        long cutoff = times[times.length - 1] - keepMs;
        if (times.length > 1 && times[1] < cutoff) {
            int drop = 0;
            while (times.length - drop > 1 && times[drop + 1] < cutoff) drop++;
            times = Arrays.copyOfRange(times, drop, times.length);
            states = Arrays.copyOfRange(states, drop, states.length);
            times[0] = BASE_MS;
        }
    }
}

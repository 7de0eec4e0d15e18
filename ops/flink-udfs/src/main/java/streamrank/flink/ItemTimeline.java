package streamrank.flink;

import java.util.ArrayList;

/**
 * An item's state after each of its recent milliseconds ({@code features.examples.ItemTimeline}),
 * so that an impression at {@code t} reads the item as of its events before {@code t}.
 * Versions older than {@code keepMs} before the latest one are dropped but the newest of them,
 * kept as the base (time {@link #BASE_MS}). The latest version holds every event.
 */
public class ItemTimeline {
    public static final long BASE_MS = -1;
    private static final FeatureState.Item NO_ITEM = new FeatureState.Item();

    public ArrayList<Long> times = new ArrayList<>(4);
    public ArrayList<FeatureState.Item> states = new ArrayList<>(4);

    public ItemTimeline() {}

    private int bisectLeft(long t) {
        int lo = 0, hi = times.size();
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (times.get(mid) < t) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    /** The item's state after its events earlier than {@code t} (do not modify). */
    public FeatureState.Item before(long t) {
        int i = bisectLeft(t);
        return i > 0 ? states.get(i - 1) : NO_ITEM;
    }

    /** The state after every event. */
    public FeatureState.Item latest() { return states.get(states.size() - 1); }

    /** Applies one event at {@code t} to every version from {@code t} on. */
    public void apply(String type, long t, long keepMs) {
        int i = bisectLeft(t);
        if (i == times.size() || times.get(i) != t) {
            times.add(i, t);
            states.add(i, i > 0 ? states.get(i - 1).copy() : new FeatureState.Item());
        }
        for (int j = i; j < states.size(); j++) FeatureState.applyItem(states.get(j), type, t);
        long cutoff = times.get(times.size() - 1) - keepMs;
        if (times.size() > 1 && times.get(1) < cutoff) {
            int drop = 0;
            while (times.size() - drop > 1 && times.get(drop + 1) < cutoff) drop++;
            times.subList(0, drop).clear();
            states.subList(0, drop).clear();
            times.set(0, BASE_MS);
        }
    }
}

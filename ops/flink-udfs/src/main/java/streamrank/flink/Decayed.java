package streamrank.flink;

/**
 * An exponentially decayed event count ({@code features.state.Decayed}): {@code value} as of
 * {@code asOfMs}; an event older than that is added already decayed, so the value does not
 * depend on arrival order. Mutable (it lives in keyed state and is updated in place).
 */
public class Decayed {
    public long halfLifeMs;
    public double value;
    public long asOfMs;

    public Decayed() {}

    public Decayed(long halfLifeMs) { this.halfLifeMs = halfLifeMs; }

    public Decayed copy() {
        Decayed d = new Decayed(halfLifeMs);
        d.value = value;
        d.asOfMs = asOfMs;
        return d;
    }

    /** The count as of {@code t} (not less than {@code asOfMs}). */
    public double read(long t) {
        if (value == 0.0) return 0.0;
        return value * Math.pow(2.0, -((double) (Math.max(t, asOfMs) - asOfMs) / halfLifeMs));
    }

    /** Adds one event at {@code t}. */
    public void add(long t) {
        if (t >= asOfMs) {
            value = read(t) + 1.0;
            asOfMs = t;
        } else {
            value = value + Math.pow(2.0, -((double) (asOfMs - t) / halfLifeMs));
        }
    }
}

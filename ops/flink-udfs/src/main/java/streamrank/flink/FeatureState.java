package streamrank.flink;

import org.apache.flink.api.common.typeinfo.TypeInfo;

/**
 * The per-key feature state and its update and read functions, a port of
 * {@code features.state} (the Python reference; the integration tests hold the two equal).
 * {@code lastMs == NONE} stands for "no event yet".
 */
public final class FeatureState {
    public static final long HOUR_MS = 3_600_000L;
    public static final long DAY_MS = 24 * HOUR_MS;
    public static final int LAST_N = 10;
    public static final double NO_HISTORY_S = 7 * 86_400.0;
    public static final double PRIOR_CTR = 0.1, PRIOR_CVR = 0.02, PRIOR_N = 10.0;
    public static final long NONE = Long.MIN_VALUE;

    public static final String[] USER_FEATURES = {"u_clicks_1h", "u_clicks_24h", "u_carts_24h",
        "u_purchases_24h", "u_impressions_24h", "u_secs_since_last"};
    public static final String[] ITEM_FEATURES = {"i_impressions_24h", "i_clicks_1h",
        "i_clicks_24h", "i_purchases_24h", "i_ctr", "i_cvr", "i_secs_since_last"};
    public static final String[] USER_CATEGORY_FEATURES = {"uc_clicks_24h", "uc_purchases_24h",
        "uc_affinity", "uc_in_last_categories"};
    /** Offsets of each group in an impression's feature vector (DENSE_FEATURES order). */
    public static final int USER_AT = 0, ITEM_AT = 6, USER_CATEGORY_AT = 13, DENSE = 17;

    private FeatureState() {}

    /** What is kept per user. */
    @TypeInfo(Codecs.UserCodec.Factory.class)
    public static class User {
        public Decayed clicks1h = new Decayed(HOUR_MS);
        public Decayed clicks24h = new Decayed(DAY_MS);
        public Decayed carts24h = new Decayed(DAY_MS);
        public Decayed purchases24h = new Decayed(DAY_MS);
        public Decayed impressions24h = new Decayed(DAY_MS);
        public long lastMs = NONE;
        public String[] lastItems = new String[0];
        public String[] lastCategories = new String[0];

        public User() {}
    }

    /** What is kept per item. */
    @TypeInfo(Codecs.ItemCodec.Factory.class)
    public static class Item {
        public Decayed impressions24h = new Decayed(DAY_MS);
        public Decayed clicks1h = new Decayed(HOUR_MS);
        public Decayed clicks24h = new Decayed(DAY_MS);
        public Decayed purchases24h = new Decayed(DAY_MS);
        public long lastMs = NONE;

        public Item() {}

        public Item copy() {
            Item s = new Item();
            s.impressions24h = impressions24h.copy();
            s.clicks1h = clicks1h.copy();
            s.clicks24h = clicks24h.copy();
            s.purchases24h = purchases24h.copy();
            s.lastMs = lastMs;
            return s;
        }
    }

    /** What is kept per (user, category). */
    public static class UserCategory {
        public Decayed clicks24h = new Decayed(DAY_MS);
        public Decayed purchases24h = new Decayed(DAY_MS);
        public long lastMs = NONE;

        public UserCategory() {}
    }

    /** Whether a state whose latest event is at {@code lastMs} is seen at {@code t}
     *  ({@code features.state.alive}: not when its latest event is more than {@code ttlMs}
     *  before {@code t}). */
    public static boolean alive(long lastMs, long t, long ttlMs) {
        return lastMs == NONE || t - lastMs <= ttlMs;
    }

    /** {@code alive(s, t, ttl) or UserState()}. */
    public static User alive(User s, long t, long ttlMs) {
        return s != null && alive(s.lastMs, t, ttlMs) ? s : new User();
    }

    /** {@code alive(s, t, ttl) or ItemState()}. */
    public static Item alive(Item s, long t, long ttlMs) {
        return s != null && alive(s.lastMs, t, ttlMs) ? s : new Item();
    }

    /** {@code alive(s, t, ttl) or UserCategoryState()}. */
    public static UserCategory alive(UserCategory s, long t, long ttlMs) {
        return s != null && alive(s.lastMs, t, ttlMs) ? s : new UserCategory();
    }

    /** When a key whose latest event is at {@code lastMs} can be freed: the first multiple of
     *  {@link #timerStep} after the watermark can pass {@code lastMs + ttl + lateness}. */
    public static long expiryTimer(long lastMs, long ttlMs, long latenessMs) {
        long due = lastMs + ttlMs + latenessMs + 1;
        long step = timerStep(ttlMs);
        return Math.floorDiv(due + step - 1, step) * step;
    }

    /** Expiry timers are rounded up to an eighth of the TTL, at most an hour and at least a
     *  second: few distinct timers (keys share them), and state is kept at most that much
     *  longer than it can be seen (an hour on the default 48 h; 22.5 s on a 3-minute TTL). */
    public static long timerStep(long ttlMs) {
        return Math.max(1_000L, Math.min(HOUR_MS, ttlMs / 8));
    }

    /** Whether no event that can still be accepted sees a state whose latest event is at
     *  {@code lastMs} once the watermark has passed {@code passed}. */
    public static boolean expired(long lastMs, long passed, long ttlMs, long latenessMs) {
        return lastMs != NONE && lastMs + ttlMs + latenessMs < passed;
    }

    static String[] push(String[] recent, String value) {
        if (value == null) return recent;
        String[] out = new String[Math.min(LAST_N, recent.length + 1)];
        out[0] = value;
        int n = 1;
        for (int k = 0; k < recent.length && n < out.length; k++) {
            if (!recent[k].equals(value)) out[n++] = recent[k];
        }
        return n == out.length ? out : java.util.Arrays.copyOf(out, n);
    }

    private static long latest(long last, long t) { return last == NONE ? t : Math.max(last, t); }

    /** {@code apply_user}, in place. */
    public static void applyUser(User s, String type, long t, String item, String category) {
        boolean newest = s.lastMs == NONE || t >= s.lastMs;
        s.lastMs = latest(s.lastMs, t);
        switch (type) {
            case "click":
                s.clicks1h.add(t);
                s.clicks24h.add(t);
                if (newest) {
                    s.lastItems = push(s.lastItems, item);
                    s.lastCategories = push(s.lastCategories, category);
                }
                break;
            case "add_to_cart": s.carts24h.add(t); break;
            case "purchase": s.purchases24h.add(t); break;
            case "impression": s.impressions24h.add(t); break;
            default: break;
        }
    }

    /** {@code apply_item}, in place. */
    public static void applyItem(Item s, String type, long t) {
        s.lastMs = latest(s.lastMs, t);
        switch (type) {
            case "click": s.clicks1h.add(t); s.clicks24h.add(t); break;
            case "purchase": s.purchases24h.add(t); break;
            case "impression": s.impressions24h.add(t); break;
            default: break;
        }
    }

    /** {@code apply_user_category}, in place. */
    public static void applyUserCategory(UserCategory s, String type, long t) {
        s.lastMs = latest(s.lastMs, t);
        if ("click".equals(type)) s.clicks24h.add(t);
        else if ("purchase".equals(type)) s.purchases24h.add(t);
    }

    private static double since(long last, long t) {
        return last == NONE ? NO_HISTORY_S : Math.max(0.0, (double) (t - last) / 1000.0);
    }

    /** {@code user_features} into {@code out} from {@code at}. */
    public static void userFeatures(User s, long t, double[] out, int at) {
        out[at] = s.clicks1h.read(t);
        out[at + 1] = s.clicks24h.read(t);
        out[at + 2] = s.carts24h.read(t);
        out[at + 3] = s.purchases24h.read(t);
        out[at + 4] = s.impressions24h.read(t);
        out[at + 5] = since(s.lastMs, t);
    }

    /** {@code item_features} into {@code out} from {@code at}. */
    public static void itemFeatures(Item s, long t, double[] out, int at) {
        double imps = s.impressions24h.read(t), clicks = s.clicks24h.read(t);
        double purchases = s.purchases24h.read(t);
        out[at] = imps;
        out[at + 1] = s.clicks1h.read(t);
        out[at + 2] = clicks;
        out[at + 3] = purchases;
        out[at + 4] = (clicks + PRIOR_CTR * PRIOR_N) / (imps + PRIOR_N);
        out[at + 5] = (purchases + PRIOR_CVR * PRIOR_N) / (clicks + PRIOR_N);
        out[at + 6] = since(s.lastMs, t);
    }

    /** {@code user_category_features} into {@code out} from {@code at}. */
    public static void userCategoryFeatures(UserCategory s, User user, String category, long t,
                                            double[] out, int at) {
        double clicks = s.clicks24h.read(t);
        out[at] = clicks;
        out[at + 1] = s.purchases24h.read(t);
        out[at + 2] = clicks / (user.clicks24h.read(t) + 1.0);
        boolean in = false;
        if (category != null) {
            for (String c : user.lastCategories) in |= c.equals(category);
        }
        out[at + 3] = in ? 1.0 : 0.0;
    }
}

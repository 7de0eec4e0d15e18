package streamrank.flink;

import org.apache.flink.api.java.functions.KeySelector;

/** The keys the job partitions events by. */
public final class Keys {
    private Keys() {}

    /** By {@code user_id}. */
    public static final class User implements KeySelector<EventRecord, String> {
        @Override
        public String getKey(EventRecord e) { return e.userId; }
    }

    /** By {@code item_id}. */
    public static final class Item implements KeySelector<EventRecord, String> {
        @Override
        public String getKey(EventRecord e) { return e.itemId; }
    }

    public static User user() { return new User(); }

    public static Item item() { return new Item(); }
}

package streamrank.flink;

import org.apache.flink.api.common.typeinfo.TypeInfo;

/**
 * A valid shopper event as it travels between the job's operators (serialized by
 * {@link Codecs.EventRecordCodec}). The fields
 * the feature state and the label join read; {@code features} holds an impression's dense
 * features as of the impression (filled by the user stage and the item stage, in the order of
 * {@code features.schema.DENSE_FEATURES}), null for other events.
 */
@TypeInfo(Codecs.EventRecordCodec.Factory.class)
public class EventRecord {
    public String eventId;
    public String eventType;
    public String userId;
    public String itemId;
    public long eventTime;
    public String requestId;
    public Long position;
    public String categoryId;
    public boolean synthetic;
    public Double price;
    public double[] features;
    /** An impression's user's last clicked items and categories before it, newest first. */
    public String[] recentItems;
    public String[] recentCategories;
    /** The search query an impression was shown for (null: not a search). */
    public String query;

    public EventRecord() {}

    /** The {@code eventType} of a record that carries an impression's item features as of the
     *  impression (the item stage's, once settled) to the label join: {@code eventId},
     *  {@code itemId} and {@code userId} name the impression, {@code features} the item's. */
    public static final String ITEM_FEATURES = "item_features";

    public boolean isItemFeatures() { return ITEM_FEATURES.equals(eventType); }

    public boolean isImpression() { return "impression".equals(eventType); }

    public boolean isLabel() { return "click".equals(eventType) || "purchase".equals(eventType); }

    /** Whether the event changes feature state ({@code features.rows.feeds_state}). */
    public boolean feedsState() { return !synthetic; }
}

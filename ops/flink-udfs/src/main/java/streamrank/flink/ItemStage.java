package streamrank.flink;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.ResultTypeQueryable;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.util.Collector;

/**
 * Keyed by item: for an impression, reads the item features as of the item's events of
 * earlier milliseconds ({@link ItemTimeline}); applies every event that feeds state and sends
 * the item row ({@code features.rows.update_item}) to {@link Rows#TAG} at once, in arrival
 * order; forwards impressions, clicks and purchases to the label join.
 */
public class ItemStage extends KeyedProcessFunction<String, EventRecord, EventRecord>
        implements ResultTypeQueryable<EventRecord> {
    private final long keepMs;
    private transient ValueState<ItemTimeline> timeline;

    /** {@code keepMs}: how far back versions are kept (the watermark's out-of-orderness). */
    public ItemStage(long keepMs) { this.keepMs = keepMs; }

    @Override
    public void open(OpenContext ctx) {
        timeline = getRuntimeContext().getState(
                new ValueStateDescriptor<>("item-timeline", ItemTimeline.class));
    }

    @Override
    public void processElement(EventRecord e, Context ctx, Collector<EventRecord> out)
            throws Exception {
        ItemTimeline tl = timeline.value();
        if (e.isImpression()) {
            FeatureState.Item before = tl == null ? new FeatureState.Item() : tl.before(e.eventTime);
            FeatureState.itemFeatures(before, e.eventTime, e.features, FeatureState.ITEM_AT);
        }
        if (e.feedsState()) {
            if (tl == null) tl = new ItemTimeline();
            tl.apply(e.eventType, e.eventTime, keepMs);
            timeline.update(tl);
            FeatureState.Item s = tl.latest();
            double[] values = new double[7];
            FeatureState.itemFeatures(s, s.lastMs, values, 0);
            ctx.output(Rows.TAG, Rows.row(Rows.ITEM_VIEW, new String[] {e.itemId}, s.lastMs,
                    FeatureState.ITEM_FEATURES, values, null, null));
        }
        if (e.isImpression() || e.isLabel()) out.collect(e);
    }

    @Override
    public TypeInformation<EventRecord> getProducedType() {
        return TypeInformation.of(EventRecord.class);
    }
}

package streamrank.flink;

import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.api.java.typeutils.TupleTypeInfo;
import org.apache.flink.util.OutputTag;

/**
 * Feature rows on the wire of {@code features.rows}: Kafka key = JSON array
 * {@code [view, *key]}, value = {@code {"view", "key", "event_time_ms", "values"}} with the
 * values of {@code features.rows.user_row} / {@code item_row} / {@code user_category_row}.
 */
public final class Rows {
    public static final String USER_VIEW = "user_features";
    public static final String ITEM_VIEW = "item_features";
    public static final String USER_CATEGORY_VIEW = "user_category_features";
    public static final TypeInformation<Tuple2<byte[], byte[]>> TYPE = new TupleTypeInfo<>(
            PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO,
            PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    public static final OutputTag<Tuple2<byte[], byte[]>> TAG = new OutputTag<>("rows", TYPE);

    private Rows() {}

    /** The side output the stages send their rows to (for PyFlink's gateway). */
    public static OutputTag<Tuple2<byte[], byte[]>> tag() { return TAG; }

    private static StringBuilder key(StringBuilder s, String view, String[] key) {
        s.append('[');
        Json.string(s, view);
        for (String k : key) Json.string(s.append(','), k);
        return s.append(']');
    }

    /** One row: its Kafka key and value. */
    public static Tuple2<byte[], byte[]> row(String view, String[] key, long t, String[] names,
                                             double[] values, String[][] lists,
                                             String[] listNames) {
        StringBuilder k = key(new StringBuilder(48), view, key);
        StringBuilder v = new StringBuilder(400);
        v.append("{\"view\":");
        Json.string(v, view).append(",\"key\":");
        v.append('[');
        for (int n = 0; n < key.length; n++) Json.string(n > 0 ? v.append(',') : v, key[n]);
        v.append("],\"event_time_ms\":").append(t).append(",\"values\":{");
        for (int n = 0; n < names.length; n++) {
            if (n > 0) v.append(',');
            Json.string(v, names[n]).append(':');
            Json.number(v, values[n]);
        }
        if (lists != null) {
            for (int n = 0; n < lists.length; n++) {
                v.append(',');
                Json.string(v, listNames[n]).append(":[");
                for (int m = 0; m < lists[n].length; m++) {
                    if (m > 0) v.append(',');
                    Json.string(v, lists[n][m]);
                }
                v.append(']');
            }
        }
        v.append("}}");
        return Tuple2.of(Json.bytes(k), Json.bytes(v));
    }
}

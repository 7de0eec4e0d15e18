package streamrank.flink;

import org.apache.flink.api.common.typeinfo.PrimitiveArrayTypeInfo;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.api.java.typeutils.TupleTypeInfo;
import org.apache.flink.util.OutputTag;

/**
 * Feature rows: what the stages send to {@link #TAG} ({@link Row}, not yet encoded: most are
 * replaced by a newer row of their key before {@link RowCoalescer} sends them) and their
 * encoding on {@code features.rows}: Kafka key = JSON array {@code [view, *key]}, value =
 * {@code {"view", "key", "event_time_ms", "values"}} with the values of
 * {@code features.rows.user_row} / {@code item_row} / {@code user_category_row}.
 */
public final class Rows {
    public static final String USER_VIEW = "user_features";
    public static final String ITEM_VIEW = "item_features";
    public static final String USER_CATEGORY_VIEW = "user_category_features";
    public static final TypeInformation<Tuple2<byte[], byte[]>> TYPE = new TupleTypeInfo<>(
            PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO,
            PrimitiveArrayTypeInfo.BYTE_PRIMITIVE_ARRAY_TYPE_INFO);
    public static final OutputTag<Row> TAG = new OutputTag<>("rows", TypeInformation.of(Row.class));

    private Rows() {}

    /** One row of a view, as the stage read it from its state (the arrays are not changed
     *  after: a newer row of the key gets new ones). */
    public static class Row {
        public String view;
        public String[] key;
        public long t;
        public String[] names;
        public double[] values;
        public String[][] lists;
        public String[] listNames;

        public Row() {}

        /** The row's view and key, one string (what {@link RowCoalescer} keeps the newest
         *  row of). */
        public String id() {
            StringBuilder s = new StringBuilder(view);
            for (String k : key) s.append('\u0000').append(k);
            return s.toString();
        }
    }

    /** The side output the stages send their rows to (for PyFlink's gateway). */
    public static OutputTag<Row> tag() { return TAG; }

    private static StringBuilder key(StringBuilder s, String view, String[] key) {
        s.append('[');
        Json.string(s, view);
        for (String k : key) Json.string(s.append(','), k);
        return s.append(']');
    }

    /** One row of {@code view} for {@code key} as of {@code t}: {@code values} named by
     *  {@code names}, then the string lists {@code lists} named by {@code listNames} (or none). */
    public static Row row(String view, String[] key, long t, String[] names, double[] values,
                          String[][] lists, String[] listNames) {
        Row r = new Row();
        r.view = view;
        r.key = key;
        r.t = t;
        r.names = names;
        r.values = values;
        r.lists = lists;
        r.listNames = listNames;
        return r;
    }

    /** A row's Kafka key and value. */
    public static Tuple2<byte[], byte[]> encode(Row r) {
        StringBuilder k = key(new StringBuilder(48), r.view, r.key);
        StringBuilder v = new StringBuilder(400);
        v.append("{\"view\":");
        Json.string(v, r.view).append(",\"key\":");
        v.append('[');
        for (int n = 0; n < r.key.length; n++) Json.string(n > 0 ? v.append(',') : v, r.key[n]);
        v.append("],\"event_time_ms\":").append(r.t).append(",\"values\":{");
        for (int n = 0; n < r.names.length; n++) {
            if (n > 0) v.append(',');
            Json.string(v, r.names[n]).append(':');
            Json.number(v, r.values[n]);
        }
        if (r.lists != null) {
            for (int n = 0; n < r.lists.length; n++) {
                v.append(',');
                Json.string(v, r.listNames[n]).append(":[");
                for (int m = 0; m < r.lists[n].length; m++) {
                    if (m > 0) v.append(',');
                    Json.string(v, r.lists[n][m]);
                }
                v.append(']');
            }
        }
        v.append("}}");
        return Tuple2.of(Json.bytes(k), Json.bytes(v));
    }
}

package streamrank.flink;

import java.io.IOException;
import java.lang.reflect.Type;
import java.nio.charset.StandardCharsets;
import java.util.Map;

import org.apache.flink.api.common.serialization.SerializerConfig;
import org.apache.flink.api.common.typeinfo.TypeInfoFactory;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeutils.SimpleTypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.TypeSerializer;
import org.apache.flink.api.common.typeutils.TypeSerializerSnapshot;
import org.apache.flink.api.common.typeutils.base.TypeSerializerSingleton;
import org.apache.flink.core.memory.DataInputView;
import org.apache.flink.core.memory.DataOutputView;

/**
 * Hand-written Flink serializers of the records between operators and of the bulkiest keyed
 * state (attached to each class with {@code @TypeInfo}). Strings travel as UTF-8 bytes in one
 * write (Flink's {@code StringSerializer} writes a checkpoint stream byte by byte), a decayed
 * counter as its value and time (its half-life is the field's, set by the constructor). The
 * parser admits only valid Unicode, so strings round-trip exactly.
 */
public final class Codecs {
    private Codecs() {}

    /** A serializer of one class, stateless; copies are deep where the state mutates. */
    abstract static class Codec<T> extends TypeSerializerSingleton<T> {
        @Override public boolean isImmutableType() { return false; }
        @Override public T copy(T from, T reuse) { return copy(from); }
        @Override public int getLength() { return -1; }
        @Override public T deserialize(T reuse, DataInputView in) throws IOException {
            return deserialize(in);
        }
        @Override public void copy(DataInputView in, DataOutputView out) throws IOException {
            serialize(deserialize(in), out);
        }
    }

    /** The type information of a {@link Codec}'s class. */
    static final class CodecType<T> extends TypeInformation<T> {
        private final Class<T> type;
        private final Codec<T> codec;

        CodecType(Class<T> type, Codec<T> codec) {
            this.type = type;
            this.codec = codec;
        }

        @Override public boolean isBasicType() { return false; }
        @Override public boolean isTupleType() { return false; }
        @Override public int getArity() { return 1; }
        @Override public int getTotalFields() { return 1; }
        @Override public Class<T> getTypeClass() { return type; }
        @Override public boolean isKeyType() { return false; }
        @Override public TypeSerializer<T> createSerializer(SerializerConfig config) { return codec; }
        @Override public String toString() { return "Codec(" + type.getSimpleName() + ")"; }
        @Override public boolean equals(Object o) {
            return o instanceof CodecType<?> c && c.type == type;
        }
        @Override public int hashCode() { return type.hashCode(); }
        @Override public boolean canEqual(Object o) { return o instanceof CodecType; }
    }

    static void writeString(DataOutputView out, String s) throws IOException {
        if (s == null) {
            out.writeInt(-1);
            return;
        }
        byte[] b = s.getBytes(StandardCharsets.UTF_8);
        out.writeInt(b.length);
        out.write(b);
    }

    static String readString(DataInputView in) throws IOException {
        int n = in.readInt();
        if (n < 0) return null;
        byte[] b = new byte[n];
        in.readFully(b);
        return new String(b, StandardCharsets.UTF_8);
    }

    static void writeStrings(DataOutputView out, String[] values) throws IOException {
        out.writeInt(values == null ? -1 : values.length);
        if (values != null) for (String v : values) writeString(out, v);
    }

    static String[] readStrings(DataInputView in) throws IOException {
        int n = in.readInt();
        if (n < 0) return null;
        String[] out = new String[n];
        for (int k = 0; k < n; k++) out[k] = readString(in);
        return out;
    }

    static void writeDoubles(DataOutputView out, double[] values) throws IOException {
        out.writeInt(values == null ? -1 : values.length);
        if (values != null) for (double v : values) out.writeDouble(v);
    }

    static double[] readDoubles(DataInputView in) throws IOException {
        int n = in.readInt();
        if (n < 0) return null;
        double[] out = new double[n];
        for (int k = 0; k < n; k++) out[k] = in.readDouble();
        return out;
    }

    static void writeBytes(DataOutputView out, byte[] b) throws IOException {
        out.writeInt(b == null ? -1 : b.length);
        if (b != null) out.write(b);
    }

    static byte[] readBytes(DataInputView in) throws IOException {
        int n = in.readInt();
        if (n < 0) return null;
        byte[] b = new byte[n];
        in.readFully(b);
        return b;
    }

    static void write(DataOutputView out, Decayed d) throws IOException {
        out.writeDouble(d.value);
        out.writeLong(d.asOfMs);
    }

    static void read(DataInputView in, Decayed d) throws IOException {
        d.value = in.readDouble();
        d.asOfMs = in.readLong();
    }

    private static String[] cloned(String[] a) { return a == null ? null : a.clone(); }

    private static double[] cloned(double[] a) { return a == null ? null : a.clone(); }

    /** {@link EventRecord}. */
    public static final class EventRecordCodec extends Codec<EventRecord> {
        @Override public EventRecord createInstance() { return new EventRecord(); }

        @Override public EventRecord copy(EventRecord e) {
            EventRecord c = new EventRecord();
            c.eventId = e.eventId;
            c.eventType = e.eventType;
            c.userId = e.userId;
            c.itemId = e.itemId;
            c.eventTime = e.eventTime;
            c.requestId = e.requestId;
            c.position = e.position;
            c.categoryId = e.categoryId;
            c.synthetic = e.synthetic;
            c.price = e.price;
            c.features = cloned(e.features);
            c.recentItems = cloned(e.recentItems);
            c.recentCategories = cloned(e.recentCategories);
            c.query = e.query;
            return c;
        }

        @Override public void serialize(EventRecord e, DataOutputView out) throws IOException {
            writeString(out, e.eventId);
            writeString(out, e.eventType);
            writeString(out, e.userId);
            writeString(out, e.itemId);
            out.writeLong(e.eventTime);
            writeString(out, e.requestId);
            out.writeBoolean(e.position != null);
            if (e.position != null) out.writeLong(e.position);
            writeString(out, e.categoryId);
            out.writeBoolean(e.synthetic);
            out.writeBoolean(e.price != null);
            if (e.price != null) out.writeDouble(e.price);
            writeDoubles(out, e.features);
            writeStrings(out, e.recentItems);
            writeStrings(out, e.recentCategories);
            writeString(out, e.query);
        }

        @Override public EventRecord deserialize(DataInputView in) throws IOException {
            EventRecord e = new EventRecord();
            e.eventId = readString(in);
            e.eventType = readString(in);
            e.userId = readString(in);
            e.itemId = readString(in);
            e.eventTime = in.readLong();
            e.requestId = readString(in);
            if (in.readBoolean()) e.position = in.readLong();
            e.categoryId = readString(in);
            e.synthetic = in.readBoolean();
            if (in.readBoolean()) e.price = in.readDouble();
            e.features = readDoubles(in);
            e.recentItems = readStrings(in);
            e.recentCategories = readStrings(in);
            e.query = readString(in);
            return e;
        }

        @Override public TypeSerializerSnapshot<EventRecord> snapshotConfiguration() {
            return new Snapshot();
        }

        public static final class Snapshot extends SimpleTypeSerializerSnapshot<EventRecord> {
            public Snapshot() { super(EventRecordCodec::new); }
        }

        public static final class Factory extends TypeInfoFactory<EventRecord> {
            @Override public TypeInformation<EventRecord> createTypeInfo(
                    Type t, Map<String, TypeInformation<?>> params) {
                return new CodecType<>(EventRecord.class, new EventRecordCodec());
            }
        }
    }

    /** {@link LabelJoin.Pending}. */
    public static final class PendingCodec extends Codec<LabelJoin.Pending> {
        @Override public LabelJoin.Pending createInstance() { return new LabelJoin.Pending(); }

        @Override public LabelJoin.Pending copy(LabelJoin.Pending p) {
            LabelJoin.Pending c = new LabelJoin.Pending();
            c.eventId = p.eventId;
            c.itemId = p.itemId;
            c.requestId = p.requestId;
            c.time = p.time;
            c.seq = p.seq;
            c.click = p.click;
            c.purchase = p.purchase;
            c.head = p.head;  // the byte arrays are written once, never changed
            c.user = p.user;
            c.item = cloned(p.item);
            c.tail = p.tail;
            return c;
        }

        @Override public void serialize(LabelJoin.Pending p, DataOutputView out)
                throws IOException {
            writeString(out, p.eventId);
            writeString(out, p.itemId);
            writeString(out, p.requestId);
            out.writeLong(p.time);
            out.writeLong(p.seq);
            out.writeInt(p.click);
            out.writeInt(p.purchase);
            writeBytes(out, p.head);
            writeBytes(out, p.user);
            writeDoubles(out, p.item);
            writeBytes(out, p.tail);
        }

        @Override public LabelJoin.Pending deserialize(DataInputView in) throws IOException {
            LabelJoin.Pending p = new LabelJoin.Pending();
            p.eventId = readString(in);
            p.itemId = readString(in);
            p.requestId = readString(in);
            p.time = in.readLong();
            p.seq = in.readLong();
            p.click = in.readInt();
            p.purchase = in.readInt();
            p.head = readBytes(in);
            p.user = readBytes(in);
            p.item = readDoubles(in);
            p.tail = readBytes(in);
            return p;
        }

        @Override public TypeSerializerSnapshot<LabelJoin.Pending> snapshotConfiguration() {
            return new Snapshot();
        }

        public static final class Snapshot extends SimpleTypeSerializerSnapshot<LabelJoin.Pending> {
            public Snapshot() { super(PendingCodec::new); }
        }

        public static final class Factory extends TypeInfoFactory<LabelJoin.Pending> {
            @Override public TypeInformation<LabelJoin.Pending> createTypeInfo(
                    Type t, Map<String, TypeInformation<?>> params) {
                return new CodecType<>(LabelJoin.Pending.class, new PendingCodec());
            }
        }
    }

    /** {@link FeatureState.Item}. */
    public static final class ItemCodec extends Codec<FeatureState.Item> {
        @Override public FeatureState.Item createInstance() { return new FeatureState.Item(); }

        @Override public FeatureState.Item copy(FeatureState.Item s) { return s.copy(); }

        @Override public void serialize(FeatureState.Item s, DataOutputView out)
                throws IOException {
            write(out, s.impressions24h);
            write(out, s.clicks1h);
            write(out, s.clicks24h);
            write(out, s.purchases24h);
            out.writeLong(s.lastMs);
        }

        @Override public FeatureState.Item deserialize(DataInputView in) throws IOException {
            FeatureState.Item s = new FeatureState.Item();
            read(in, s.impressions24h);
            read(in, s.clicks1h);
            read(in, s.clicks24h);
            read(in, s.purchases24h);
            s.lastMs = in.readLong();
            return s;
        }

        @Override public TypeSerializerSnapshot<FeatureState.Item> snapshotConfiguration() {
            return new Snapshot();
        }

        public static final class Snapshot extends SimpleTypeSerializerSnapshot<FeatureState.Item> {
            public Snapshot() { super(ItemCodec::new); }
        }

        public static final class Factory extends TypeInfoFactory<FeatureState.Item> {
            @Override public TypeInformation<FeatureState.Item> createTypeInfo(
                    Type t, Map<String, TypeInformation<?>> params) {
                return new CodecType<>(FeatureState.Item.class, new ItemCodec());
            }
        }
    }

    /** {@link FeatureState.User}. */
    public static final class UserCodec extends Codec<FeatureState.User> {
        @Override public FeatureState.User createInstance() { return new FeatureState.User(); }

        @Override public FeatureState.User copy(FeatureState.User s) {
            FeatureState.User c = new FeatureState.User();
            c.clicks1h = s.clicks1h.copy();
            c.clicks24h = s.clicks24h.copy();
            c.carts24h = s.carts24h.copy();
            c.purchases24h = s.purchases24h.copy();
            c.impressions24h = s.impressions24h.copy();
            c.lastMs = s.lastMs;
            c.lastItems = cloned(s.lastItems);
            c.lastCategories = cloned(s.lastCategories);
            return c;
        }

        @Override public void serialize(FeatureState.User s, DataOutputView out)
                throws IOException {
            write(out, s.clicks1h);
            write(out, s.clicks24h);
            write(out, s.carts24h);
            write(out, s.purchases24h);
            write(out, s.impressions24h);
            out.writeLong(s.lastMs);
            writeStrings(out, s.lastItems);
            writeStrings(out, s.lastCategories);
        }

        @Override public FeatureState.User deserialize(DataInputView in) throws IOException {
            FeatureState.User s = new FeatureState.User();
            read(in, s.clicks1h);
            read(in, s.clicks24h);
            read(in, s.carts24h);
            read(in, s.purchases24h);
            read(in, s.impressions24h);
            s.lastMs = in.readLong();
            s.lastItems = readStrings(in);
            s.lastCategories = readStrings(in);
            return s;
        }

        @Override public TypeSerializerSnapshot<FeatureState.User> snapshotConfiguration() {
            return new Snapshot();
        }

        public static final class Snapshot extends SimpleTypeSerializerSnapshot<FeatureState.User> {
            public Snapshot() { super(UserCodec::new); }
        }

        public static final class Factory extends TypeInfoFactory<FeatureState.User> {
            @Override public TypeInformation<FeatureState.User> createTypeInfo(
                    Type t, Map<String, TypeInformation<?>> params) {
                return new CodecType<>(FeatureState.User.class, new UserCodec());
            }
        }
    }
}

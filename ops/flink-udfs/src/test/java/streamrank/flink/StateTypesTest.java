package streamrank.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.GenericTypeInfo;
import org.apache.flink.api.java.typeutils.PojoTypeInfo;
import org.apache.flink.core.memory.DataInputDeserializer;
import org.apache.flink.core.memory.DataOutputSerializer;
import org.junit.jupiter.api.Test;

/** Keyed state and records are Flink POJOs or hand-written codecs all the way down (no Kryo
 *  in checkpoints or on the wire), the codecs round-trip, and a few parser rules. */
class StateTypesTest {
    private static void assertNoGeneric(TypeInformation<?> type, String path) {
        assertFalse(type instanceof GenericTypeInfo, path + " falls back to Kryo: " + type);
        if (type instanceof PojoTypeInfo<?> pojo) {
            for (int k = 0; k < pojo.getArity(); k++) {
                assertNoGeneric(pojo.getPojoFieldAt(k).getTypeInformation(),
                        path + "." + pojo.getPojoFieldAt(k).getField().getName());
            }
        }
        for (TypeInformation<?> inner : type.getGenericParameters().values()) {
            assertNoGeneric(inner, path + "<>");
        }
    }

    @Test
    void stateAndRecordsArePojosOrCodecs() {
        for (Class<?> c : new Class<?>[] {FeatureState.UserCategory.class, ItemStage.Held.class,
                LabelJoin.JoinState.class, Rows.Row.class}) {
            TypeInformation<?> type = TypeInformation.of(c);
            assertTrue(type instanceof PojoTypeInfo, c + " is not a POJO: " + type);
            assertNoGeneric(type, c.getSimpleName());
        }
        for (Class<?> c : new Class<?>[] {EventRecord.class, FeatureState.User.class,
                FeatureState.Item.class, LabelJoin.Pending.class}) {
            TypeInformation<?> type = TypeInformation.of(c);
            assertTrue(type instanceof Codecs.CodecType, c + " has no codec: " + type);
        }
    }

    private static <T> T roundTrip(Codecs.Codec<T> codec, T value) throws IOException {
        DataOutputSerializer out = new DataOutputSerializer(64);
        codec.serialize(value, out);
        DataInputDeserializer in = new DataInputDeserializer(out.getCopyOfBuffer());
        T back = codec.deserialize(in);
        assertEquals(0, in.available());
        return back;
    }

    @Test
    void codecsRoundTrip() throws IOException {
        EventRecord e = new EventRecord();
        e.eventId = "\u00e9\ud83d\ude00";
        e.eventType = "impression";
        e.userId = "u";
        e.itemId = "";
        e.eventTime = -5;
        e.position = 3L;
        e.price = 1.5;
        e.synthetic = true;
        e.features = new double[] {0.25, -1};
        e.recentItems = new String[] {"a", "b"};
        EventRecord back = roundTrip(new Codecs.EventRecordCodec(), e);
        assertEquals(e.eventId, back.eventId);
        assertEquals("", back.itemId);
        assertEquals(null, back.requestId);
        assertEquals(null, back.categoryId);
        assertEquals(-5, back.eventTime);
        assertEquals(3L, back.position);
        assertEquals(1.5, back.price);
        assertTrue(back.synthetic);
        assertArrayEquals(e.features, back.features);
        assertArrayEquals(e.recentItems, back.recentItems);
        assertEquals(null, back.recentCategories);

        FeatureState.User u = new FeatureState.User();
        FeatureState.applyUser(u, "click", 7, "i", "c");
        FeatureState.User ub = roundTrip(new Codecs.UserCodec(), u);
        assertEquals(u.clicks1h.read(9), ub.clicks1h.read(9));
        assertEquals(FeatureState.HOUR_MS, ub.clicks1h.halfLifeMs);
        assertEquals(7, ub.lastMs);
        assertArrayEquals(new String[] {"c"}, ub.lastCategories);

        FeatureState.Item s = new FeatureState.Item();
        FeatureState.applyItem(s, "purchase", 3);
        FeatureState.Item sb = roundTrip(new Codecs.ItemCodec(), s);
        assertEquals(1.0, sb.purchases24h.read(3));
        assertEquals(3, sb.lastMs);

        e.features = new double[FeatureState.DENSE];
        LabelJoin.Pending p = LabelJoin.pending(e, 4);
        p.item[2] = 0.5;
        LabelJoin.Pending pb = roundTrip(new Codecs.PendingCodec(), p);
        assertArrayEquals(LabelJoin.example(p), LabelJoin.example(pb));
        assertEquals(4, pb.seq);
        LabelJoin.Pending pc = new Codecs.PendingCodec().copy(p);
        p.item[2] = 1.0;
        assertEquals(0.5, pc.item[2]);
    }

    private static final EventParser PARSER = new EventParser(946_684_800_000L, 86_400_000L, 16_384);
    private static final String BASE = "{\"event_id\":\"e\",\"event_type\":\"click\","
            + "\"user_id\":\"u\",\"item_id\":\"i\",\"event_time\":1511658000000";

    private static String reason(String json) {
        Rejected r = assertThrows(Rejected.class,
                () -> PARSER.parse(json.getBytes(StandardCharsets.UTF_8), 1511658000000L));
        return r.reason;
    }

    @Test
    void parserReasons() throws Rejected {
        assertEquals("invalid_field", reason("[1]"));
        assertEquals("bad_json", reason(BASE + "} x"));
        assertEquals("bad_json", reason(BASE + ",\"position\":01}"));
        assertEquals("invalid_field", reason(BASE + ",\"position\":2.5}"));
        assertEquals("invalid_field", reason(BASE + ",\"event_time\":1.5e12}"));
        assertEquals("absurd_time", reason(BASE + ",\"event_time\":5}"));
        assertEquals("bad_json", reason(BASE + ",\"user_id\":\"\\ud800\"}"));
        EventRecord e = PARSER.parse((BASE + ",\"position\":\"2.0\",\"synthetic\":\"yes\","
                + "\"event_id\":\"f\"}").getBytes(StandardCharsets.UTF_8), 1511658000000L);
        assertEquals(2L, e.position);
        assertTrue(e.synthetic);
        assertEquals("f", e.eventId);
        assertEquals(null, e.price);
        EventRecord priced = PARSER.parse((BASE + ",\"price\":\"1.5\"}")
                .getBytes(StandardCharsets.UTF_8), 1511658000000L);
        assertEquals(1.5, priced.price);
    }

    @Test
    void stateExpiresInEventTime() {
        long ttl = 2 * FeatureState.DAY_MS;
        FeatureState.Item s = new FeatureState.Item();
        FeatureState.applyItem(s, "click", 0);
        assertTrue(FeatureState.alive(s, FeatureState.DAY_MS, ttl) == s);
        assertTrue(FeatureState.alive(s, ttl + 1, ttl) != s);
        assertEquals(9 * FeatureState.HOUR_MS / 4,  // rounded up to a quarter of an hour
                FeatureState.expiryTimer(10, 2 * FeatureState.HOUR_MS, 60_000));
        assertEquals(FeatureState.HOUR_MS, FeatureState.timerStep(ttl));
        assertEquals(22_500, FeatureState.timerStep(180_000));
        assertFalse(FeatureState.expired(0, ttl + 60_000, ttl, 60_000));
        assertTrue(FeatureState.expired(0, ttl + 60_001, ttl, 60_000));
    }

    @Test
    void exampleJsonCarriesPriceAndRecentClicks() {
        EventRecord e = new EventRecord();
        e.eventId = "x";
        e.userId = "u";
        e.itemId = "i";
        e.eventType = "impression";
        e.eventTime = 5;
        e.price = 12.0;
        e.features = new double[FeatureState.DENSE];
        e.recentItems = new String[] {"b", "a"};
        e.recentCategories = new String[0];
        e.features[FeatureState.USER_AT] = 1.5;
        e.features[FeatureState.USER_CATEGORY_AT] = 2.0;
        LabelJoin.Pending p = LabelJoin.pending(e, 0);
        p.item[0] = 3.0;
        p.click = 1;
        String json = new String(LabelJoin.example(p), StandardCharsets.US_ASCII);
        assertTrue(json.startsWith("{\"example_id\":\"x\",\"request_id\":null,\"user_id\":\"u\","
                + "\"item_id\":\"i\",\"category_id\":null,\"position\":null,\"event_time\":5,"
                + "\"click\":1,\"purchase\":0,\"features\":{\"u_clicks_1h\":1.5,"), json);
        assertTrue(json.contains("\"u_secs_since_last\":0.0,\"i_impressions_24h\":3.0,"), json);
        assertTrue(json.contains("\"i_secs_since_last\":0.0,\"uc_clicks_24h\":2.0,"), json);
        assertTrue(json.endsWith(
                "},\"price\":12.0,\"recent_items\":[\"b\",\"a\"],\"recent_categories\":[]}"),
                json);
    }
}

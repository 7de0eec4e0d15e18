package streamrank.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;

import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.typeutils.GenericTypeInfo;
import org.apache.flink.api.java.typeutils.PojoTypeInfo;
import org.junit.jupiter.api.Test;

/** Keyed state and records are Flink POJOs all the way down (no Kryo in checkpoints or on
 *  the wire), and a few parser rules. */
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
    void stateAndRecordsArePojos() {
        for (Class<?> c : new Class<?>[] {EventRecord.class, FeatureState.User.class,
                FeatureState.UserCategory.class, FeatureState.Item.class, ItemStage.Held.class,
                LabelJoin.JoinState.class}) {
            TypeInformation<?> type = TypeInformation.of(c);
            assertTrue(type instanceof PojoTypeInfo, c + " is not a POJO: " + type);
            assertNoGeneric(type, c.getSimpleName());
        }
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
        assertEquals(3 * FeatureState.HOUR_MS,
                FeatureState.expiryTimer(10, 2 * FeatureState.HOUR_MS, 60_000));
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
        LabelJoin.Pending p = new LabelJoin.Pending();
        p.event = e;
        String json = new String(LabelJoin.example(p), StandardCharsets.US_ASCII);
        assertTrue(json.endsWith(
                "},\"price\":12.0,\"recent_items\":[\"b\",\"a\"],\"recent_categories\":[]}"),
                json);
    }
}

package streamrank.flink;

import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CharsetDecoder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.math.BigInteger;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.regex.Pattern;

/**
 * One-pass parse and validation of an event record, with the rules (and reason codes) of
 * {@code connectors.events.decode_event}: {@code oversize}, then {@code bad_json} (the JSON
 * grammar of pydantic's parser: NaN and Infinity literals allowed, no BOM, no lone surrogate
 * escapes, strict UTF-8), then {@code invalid_field} (the field types, lengths and lax
 * conversions of {@code connectors.events.Event}; a repeated key keeps its last value; unknown
 * keys are ignored), then {@code absurd_time}. Details say the same thing as pydantic's, in
 * other words.
 */
public final class EventParser {
    private static final Set<String> TYPES =
            Set.of("impression", "click", "add_to_cart", "favourite", "purchase", "search");
    private static final Set<String> TRUE = Set.of("1", "on", "t", "true", "y", "yes");
    private static final Set<String> FALSE = Set.of("0", "off", "f", "false", "n", "no");
    private static final Pattern INT_TEXT = Pattern.compile("[+-]?[0-9](_?[0-9])*(\\.0*)?");
    private static final Pattern FLOAT_TEXT = Pattern.compile(
            "[+-]?(([0-9](_?[0-9])*)(\\.([0-9](_?[0-9])*)?)?|\\.[0-9](_?[0-9])*)([eE][+-]?[0-9](_?[0-9])*)?");
    private static final Pattern FLOAT_WORD =
            Pattern.compile("[+-]?(inf|infinity|nan)", Pattern.CASE_INSENSITIVE);
    private static final Object NULL = new Object();
    private static final Object MISSING = null;

    private final long minTimeMs;
    private final long maxFutureMs;
    private final int maxBytes;

    public EventParser(long minTimeMs, long maxFutureMs, int maxBytes) {
        this.minTimeMs = minTimeMs;
        this.maxFutureMs = maxFutureMs;
        this.maxBytes = maxBytes;
    }

    /** A JSON number as read: its text and whether it has a fraction or exponent. */
    private record Num(String text, boolean integral) {}

    /** The event in {@code raw}, or {@link Rejected} with the reason. */
    public EventRecord parse(byte[] raw, long nowMs) throws Rejected {
        if (raw.length > maxBytes) {
            throw new Rejected("oversize", raw.length + " bytes > " + maxBytes);
        }
        Object[] slots = new Object[Field.values().length];
        boolean object = new Reader(raw).document(slots);
        if (!object) {
            throw new Rejected("invalid_field", "record: Input should be an object");
        }
        List<String> errors = new ArrayList<>();
        EventRecord e = new EventRecord();
        e.eventId = str(slots, Field.event_id, true, 1, 128, errors);
        Object type = slots[Field.event_type.ordinal()];
        if (type == MISSING) {
            errors.add("event_type: Field required");
        } else if (!(type instanceof String s) || !TYPES.contains(s)) {
            errors.add("event_type: Input should be 'impression', 'click', 'add_to_cart', "
                    + "'favourite', 'purchase' or 'search'");
        } else {
            e.eventType = s;
        }
        e.userId = str(slots, Field.user_id, true, 1, 128, errors);
        e.itemId = str(slots, Field.item_id, true, 1, 128, errors);
        BigInteger time = eventTime(slots[Field.event_time.ordinal()], errors);
        e.requestId = str(slots, Field.request_id, false, 0, 128, errors);
        e.position = position(slots[Field.position.ordinal()], errors);
        e.categoryId = str(slots, Field.category_id, false, 0, 128, errors);
        e.price = price(slots[Field.price.ordinal()], errors);
        e.query = str(slots, Field.query, false, 0, 1024, errors);
        e.synthetic = synthetic(slots[Field.synthetic.ordinal()], errors);
        if (!errors.isEmpty()) {
            throw new Rejected("invalid_field", String.join("; ", errors));
        }
        BigInteger latest = BigInteger.valueOf(nowMs).add(BigInteger.valueOf(maxFutureMs));
        if (time.compareTo(BigInteger.valueOf(minTimeMs)) < 0 || time.compareTo(latest) > 0) {
            throw new Rejected("absurd_time", "event_time " + time + " outside plausible range");
        }
        e.eventTime = time.longValueExact();
        return e;
    }

    private enum Field {
        event_id, event_type, user_id, item_id, event_time, request_id, position, category_id,
        price, query, synthetic;

        static Field of(String key) {
            switch (key) {
                case "event_id": return event_id;
                case "event_type": return event_type;
                case "user_id": return user_id;
                case "item_id": return item_id;
                case "event_time": return event_time;
                case "request_id": return request_id;
                case "position": return position;
                case "category_id": return category_id;
                case "price": return price;
                case "query": return query;
                case "synthetic": return synthetic;
                default: return null;
            }
        }
    }

    private static String str(Object[] slots, Field f, boolean required, int min, int max,
                              List<String> errors) {
        Object v = slots[f.ordinal()];
        if (v == MISSING) {
            if (required) errors.add(f + ": Field required");
            return null;
        }
        if (v == NULL && !required) return null;
        if (!(v instanceof String s)) {
            errors.add(f + ": Input should be a valid string");
            return null;
        }
        int n = s.codePointCount(0, s.length());
        if (n < min) {
            errors.add(f + ": String should have at least " + min + " character");
            return null;
        }
        if (n > max) {
            errors.add(f + ": String should have at most " + max + " characters");
            return null;
        }
        return s;
    }

    private static BigInteger eventTime(Object v, List<String> errors) {
        if (v == MISSING) {
            errors.add("event_time: Field required");
            return BigInteger.ZERO;
        }
        if (!(v instanceof Num n) || !n.integral()) {
            errors.add("event_time: Input should be a valid integer");
            return BigInteger.ZERO;
        }
        BigInteger t = new BigInteger(n.text());
        if (t.signum() < 0) {
            errors.add("event_time: Input should be greater than or equal to 0");
        }
        return t;
    }

    private static Long position(Object v, List<String> errors) {
        if (v == MISSING || v == NULL) return null;
        BigInteger p;
        if (v instanceof Boolean b) {
            p = b ? BigInteger.ONE : BigInteger.ZERO;
        } else if (v instanceof Num n) {
            if (n.integral()) {
                p = new BigInteger(n.text());
            } else {
                double d = Double.parseDouble(n.text());
                if (Double.isNaN(d) || Double.isInfinite(d) || d != Math.rint(d)) {
                    errors.add("position: Input should be a valid integer, got a number with a "
                            + "fractional part");
                    return null;
                }
                p = new java.math.BigDecimal(d).toBigIntegerExact();
            }
        } else if (v instanceof String s) {
            String t = s.strip();
            if (!INT_TEXT.matcher(t).matches()) {
                errors.add("position: Input should be a valid integer, unable to parse string "
                        + "as an integer");
                return null;
            }
            int dot = t.indexOf('.');
            p = new BigInteger((dot < 0 ? t : t.substring(0, dot)).replace("_", ""));
        } else {
            errors.add("position: Input should be a valid integer");
            return null;
        }
        if (p.signum() < 0) {
            errors.add("position: Input should be greater than or equal to 0");
            return null;
        }
        if (p.bitLength() > 63) {
            errors.add("position: out of the 64-bit range this job keeps");
            return null;
        }
        return p.longValue();
    }

    private static Double price(Object v, List<String> errors) {
        if (v == MISSING || v == NULL) return null;
        double d;
        if (v instanceof Boolean b) {
            d = b ? 1.0 : 0.0;
        } else if (v instanceof Num n) {
            d = Double.parseDouble(n.text());
        } else if (v instanceof String s) {
            String t = s.strip();
            if (FLOAT_WORD.matcher(t).matches()) {
                d = t.toLowerCase(Locale.ROOT).contains("nan") ? Double.NaN
                        : t.startsWith("-") ? Double.NEGATIVE_INFINITY : Double.POSITIVE_INFINITY;
            } else if (FLOAT_TEXT.matcher(t).matches()) {
                d = Double.parseDouble(t.replace("_", ""));
            } else {
                errors.add("price: Input should be a valid number, unable to parse string as a "
                        + "number");
                return null;
            }
        } else {
            errors.add("price: Input should be a valid number");
            return null;
        }
        if (!(d >= 0.0)) {
            errors.add("price: Input should be greater than or equal to 0");
            return null;
        }
        return d;
    }

    private static boolean synthetic(Object v, List<String> errors) {
        if (v == MISSING) return false;
        if (v instanceof Boolean b) return b;
        if (v instanceof Num n) {
            double d = Double.parseDouble(n.text());
            if (d == 1.0) return true;
            if (d == 0.0) return false;
        } else if (v instanceof String s) {
            String t = s.toLowerCase(Locale.ROOT);
            if (TRUE.contains(t)) return true;
            if (FALSE.contains(t)) return false;
        }
        errors.add("synthetic: Input should be a valid boolean");
        return false;
    }

    /** A strict JSON reader over UTF-8 bytes that keeps the top-level fields of an event. */
    private static final class Reader {
        /** pydantic's parser refuses a value inside more than this many arrays and objects. */
        private static final int MAX_DEPTH = 200;
        private final byte[] b;
        private int i;
        private int depth;

        Reader(byte[] b) { this.b = b; }

        /** Reads the whole document; true if it is an object (its event fields in slots). */
        boolean document(Object[] slots) throws Rejected {
            ws();
            boolean object = peek() == '{';
            if (object) {
                depth++;
                object(slots);
            } else {
                value();
            }
            ws();
            if (i < b.length) throw bad("trailing characters");
            return object;
        }

        private Rejected bad(String what) {
            return new Rejected("bad_json", "Invalid JSON: " + what + " at byte " + i);
        }

        private int peek() { return i < b.length ? b[i] & 0xff : -1; }

        private void ws() {
            while (i < b.length) {
                byte c = b[i];
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') i++;
                else break;
            }
        }

        private void object(Object[] slots) throws Rejected {
            i++; // '{'
            ws();
            if (peek() == '}') { i++; return; }
            while (true) {
                ws();
                if (peek() != '"') throw bad(peek() == -1 ? "EOF while parsing an object"
                        : "key must be a string");
                String key = string();
                ws();
                if (peek() != ':') throw bad("expected ':'");
                i++;
                ws();
                Field f = slots == null ? null : Field.of(key);
                Object v = value();
                if (f != null) slots[f.ordinal()] = v;
                ws();
                int c = peek();
                if (c == ',') {
                    i++;
                    ws();
                    if (peek() == '}') throw bad("trailing comma");
                } else if (c == '}') {
                    i++;
                    return;
                } else {
                    throw bad("expected ',' or '}'");
                }
            }
        }

        private void array() throws Rejected {
            i++; // '['
            ws();
            if (peek() == ']') { i++; return; }
            while (true) {
                ws();
                value();
                ws();
                int c = peek();
                if (c == ',') {
                    i++;
                    ws();
                    if (peek() == ']') throw bad("trailing comma");
                } else if (c == ']') {
                    i++;
                    return;
                } else {
                    throw bad("expected ',' or ']'");
                }
            }
        }

        /** A value: String, Num, Boolean, NULL, or a marker object for arrays and objects. */
        private Object value() throws Rejected {
            if (depth > MAX_DEPTH) throw bad("recursion limit exceeded");
            int c = peek();
            switch (c) {
                case '{': depth++; object(null); depth--; return Boolean.class;
                case '[': depth++; array(); depth--; return Boolean.class;
                case '"': return string();
                case 't': literal("true"); return Boolean.TRUE;
                case 'f': literal("false"); return Boolean.FALSE;
                case 'n': literal("null"); return NULL;
                case 'N': literal("NaN"); return new Num("NaN", false);
                case 'I': literal("Infinity"); return new Num("Infinity", false);
                case -1: throw bad("EOF while parsing a value");
                default:
                    if (c == '-' || (c >= '0' && c <= '9')) return number();
                    throw bad("expected value");
            }
        }

        private void literal(String word) throws Rejected {
            int n = word.length();
            if (i + n > b.length) throw bad("EOF while parsing a value");
            for (int k = 0; k < n; k++) {
                if (b[i + k] != word.charAt(k)) throw bad("expected value");
            }
            i += n;
        }

        private Num number() throws Rejected {
            int start = i;
            if (peek() == '-') {
                i++;
                if (peek() == 'I') {
                    literal("Infinity");
                    return new Num("-Infinity", false);
                }
            }
            int c = peek();
            if (c == '0') {
                i++;
                if (isDigit(peek())) throw bad("invalid number");
            } else if (isDigit(c)) {
                while (isDigit(peek())) i++;
            } else {
                throw bad("invalid number");
            }
            boolean integral = true;
            if (peek() == '.') {
                integral = false;
                i++;
                if (!isDigit(peek())) throw bad("invalid number");
                while (isDigit(peek())) i++;
            }
            if (peek() == 'e' || peek() == 'E') {
                integral = false;
                i++;
                if (peek() == '+' || peek() == '-') i++;
                if (!isDigit(peek())) throw bad("invalid number");
                while (isDigit(peek())) i++;
            }
            return new Num(new String(b, start, i - start, StandardCharsets.US_ASCII), integral);
        }

        private static boolean isDigit(int c) { return c >= '0' && c <= '9'; }

        private String string() throws Rejected {
            i++; // '"'
            int start = i;
            boolean ascii = true;
            while (true) {
                if (i >= b.length) throw bad("EOF while parsing a string");
                int c = b[i] & 0xff;
                if (c == '"') {
                    String s = ascii ? new String(b, start, i - start, StandardCharsets.ISO_8859_1)
                            : utf8(start, i);
                    i++;
                    return s;
                }
                if (c == '\\') return escaped(start);
                if (c < 0x20) throw bad("control character while parsing a string");
                if (c >= 0x80) ascii = false;
                i++;
            }
        }

        private String utf8(int from, int to) throws Rejected {
            CharsetDecoder dec = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT);
            try {
                return dec.decode(ByteBuffer.wrap(b, from, to - from)).toString();
            } catch (CharacterCodingException err) {
                throw bad("invalid unicode code point");
            }
        }

        /** The rest of a string that has escapes, from its first byte at {@code start}. */
        private String escaped(int start) throws Rejected {
            StringBuilder out = new StringBuilder(utf8(start, i));
            int run = i;
            while (true) {
                if (i >= b.length) throw bad("EOF while parsing a string");
                int c = b[i] & 0xff;
                if (c == '"') {
                    out.append(utf8(run, i));
                    i++;
                    return out.toString();
                }
                if (c < 0x20) throw bad("control character while parsing a string");
                if (c != '\\') { i++; continue; }
                out.append(utf8(run, i));
                i++;
                if (i >= b.length) throw bad("EOF while parsing a string");
                int e = b[i++] & 0xff;
                switch (e) {
                    case '"': out.append('"'); break;
                    case '\\': out.append('\\'); break;
                    case '/': out.append('/'); break;
                    case 'b': out.append('\b'); break;
                    case 'f': out.append('\f'); break;
                    case 'n': out.append('\n'); break;
                    case 'r': out.append('\r'); break;
                    case 't': out.append('\t'); break;
                    case 'u': {
                        char h = hex4();
                        if (Character.isHighSurrogate(h)) {
                            if (i + 1 < b.length && b[i] == '\\' && b[i + 1] == 'u') {
                                i += 2;
                                char l = hex4();
                                if (!Character.isLowSurrogate(l)) throw bad("invalid escape");
                                out.append(h).append(l);
                            } else {
                                throw bad("unexpected end of hex escape");
                            }
                        } else if (Character.isLowSurrogate(h)) {
                            throw bad("lone leading surrogate in hex escape");
                        } else {
                            out.append(h);
                        }
                        break;
                    }
                    default: throw bad("invalid escape");
                }
                run = i;
            }
        }

        private char hex4() throws Rejected {
            if (i + 4 > b.length) throw bad("EOF while parsing a string");
            int v = 0;
            for (int k = 0; k < 4; k++) {
                int d = Character.digit(b[i + k], 16);
                if (d < 0) throw bad("invalid escape");
                v = v * 16 + d;
            }
            i += 4;
            return (char) v;
        }
    }
}

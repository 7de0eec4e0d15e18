package streamrank.flink;

/** Writing JSON text the way Python's {@code json.dumps} does (ASCII only, same escapes). */
final class Json {
    private Json() {}

    static StringBuilder string(StringBuilder out, String s) {
        out.append('"');
        if (plain(s)) return out.append(s).append('"');
        for (int k = 0; k < s.length(); k++) {
            char c = s.charAt(k);
            switch (c) {
                case '"': out.append("\\\""); break;
                case '\\': out.append("\\\\"); break;
                case '\n': out.append("\\n"); break;
                case '\r': out.append("\\r"); break;
                case '\t': out.append("\\t"); break;
                case '\b': out.append("\\b"); break;
                case '\f': out.append("\\f"); break;
                default:
                    if (c < 0x20 || c > 0x7f) {
                        out.append(String.format("\\u%04x", (int) c));
                    } else {
                        out.append(c);
                    }
            }
        }
        return out.append('"');
    }

    /** Whether {@code s} needs no escape (printable ASCII but the quote and backslash). */
    private static boolean plain(String s) {
        for (int k = 0; k < s.length(); k++) {
            char c = s.charAt(k);
            if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') return false;
        }
        return true;
    }

    static StringBuilder nullableString(StringBuilder out, String s) {
        return s == null ? out.append("null") : string(out, s);
    }

    /** A finite double as JSON (Java's shortest round-trip form, valid JSON). */
    static StringBuilder number(StringBuilder out, double v) {
        if (v == Math.rint(v) && Math.abs(v) < 1e15) {
            return out.append((long) v).append(".0");
        }
        return out.append(v);
    }

    static byte[] bytes(StringBuilder out) {
        return out.toString().getBytes(java.nio.charset.StandardCharsets.US_ASCII);
    }
}

// Bootstrap that runs inside a sandboxed Java function process (JDK only, no jars).
//
// taskorch.functions compiles this file next to the user's class and starts it as
// `java ... TaskorchBootstrap MODE Class::method FUNCTION_NAME MEMORY_MB FRAME_FD` with the
// function's folder as cwd. It resolves the handler, answers {"ready": ...} once, then (MODE
// "serve") reads one JSON request per line from stdin and writes one JSON response per line to
// FRAME_FD (a pipe of its own; 1 is stdout): {"id", "event", ...} -> {"id", "ok": true,
// "result"} or {"id", "ok": false, "error"}. stdout and stderr are the function's log, so the
// JVM's own warnings there ("Failed to start thread") cannot break the protocol.
// The handler is a public method taking one argument (Map<String, Object>), static or not.

import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.lang.reflect.Array;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.lang.reflect.RecordComponent;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public final class TaskorchBootstrap {
    private static final int MAX_TRACE_CHARS = 8000;
    // A result is at most 6 MB of JSON, AWS Lambda's limit for a response (as in every runtime).
    private static final int MAX_RESULT_BYTES = 6 * 1024 * 1024;
    private static final String TOO_LARGE = "ResultTooLarge: the result is larger than "
            + (MAX_RESULT_BYTES >> 20) + " MB of JSON (the limit of a function's answer): return less, "
            + "or store it elsewhere and return where";

    /** Thrown while writing a result that is over MAX_RESULT_BYTES. */
    static final class ResultTooLarge extends RuntimeException {
        ResultTooLarge() {
            super(TOO_LARGE, null, false, false);
        }
    }

    private TaskorchBootstrap() {}

    public static void main(String[] args) throws Exception {
        String mode = args[0];
        String handler = args[1];
        OutputStream out = frames(Integer.parseInt(args[4]));
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        System.setIn(new ByteArrayInputStream(new byte[0]));

        Method method;
        Object target;
        try {
            method = resolve(handler);
            target = Modifier.isStatic(method.getModifiers())
                    ? null
                    : method.getDeclaringClass().getDeclaredConstructor().newInstance();
        } catch (Throwable t) {
            Throwable cause = unwrap(t);
            send(out, "{\"ready\":false,\"error\":" + Json.quote(describe(cause))
                    + ",\"trace\":" + Json.quote(trace(cause)) + "}");
            System.exit(1);
            return;
        }
        send(out, "{\"ready\":true}");
        if (!mode.equals("serve")) {
            return;
        }
        String line;
        while ((line = in.readLine()) != null) {
            Object id = null;
            String reply;
            try {
                @SuppressWarnings("unchecked")
                Map<String, Object> request = (Map<String, Object>) Json.parse(line);
                id = request.get("id");
                Object event = request.get("event");
                Class<?> param = method.getParameterTypes()[0];
                if (event != null && !param.isInstance(event)) {
                    throw new IllegalArgumentException("the handler takes a " + param.getName()
                            + " but the event is a " + Json.typeName(event));
                }
                Object result = method.invoke(target, event);
                reply = "{\"id\":" + Json.write(id) + ",\"ok\":true,\"result\":"
                        + Json.write(result, MAX_RESULT_BYTES) + "}";
                if (reply.length() > MAX_RESULT_BYTES / 3
                        && reply.getBytes(StandardCharsets.UTF_8).length > MAX_RESULT_BYTES) {
                    throw new ResultTooLarge();
                }
            } catch (ResultTooLarge t) {
                reply = "{\"id\":" + Json.write(id) + ",\"ok\":false,\"error\":" + Json.quote(TOO_LARGE)
                        + ",\"trace\":\"\"}";
            } catch (Throwable t) {
                Throwable cause = unwrap(t);
                reply = "{\"id\":" + Json.write(id) + ",\"ok\":false,\"error\":" + Json.quote(describe(cause))
                        + ",\"trace\":" + Json.quote(trace(cause)) + "}";
            }
            send(out, reply);
        }
    }

    /** Finds the public one-argument method named by "Class::method". */
    private static Method resolve(String handler) throws ClassNotFoundException, NoSuchMethodException {
        int sep = handler.indexOf("::");
        String className = handler.substring(0, sep);
        String methodName = handler.substring(sep + 2);
        Class<?> cls = Class.forName(className);
        Method found = null;
        for (Method m : cls.getMethods()) {
            if (m.getName().equals(methodName) && m.getParameterCount() == 1) {
                // Prefer the overload that accepts the Map we build from a JSON object.
                if (found == null || m.getParameterTypes()[0].isAssignableFrom(LinkedHashMap.class)) {
                    found = m;
                }
            }
        }
        if (found == null) {
            throw new NoSuchMethodException("class " + className + " has no public method "
                    + methodName + "(Map<String, Object> event)");
        }
        return found;
    }

    private static Throwable unwrap(Throwable t) {
        while ((t instanceof InvocationTargetException || t instanceof ExceptionInInitializerError)
                && t.getCause() != null) {
            t = t.getCause();
        }
        return t;
    }

    private static String describe(Throwable t) {
        String message = t.getMessage();
        return message == null || message.isEmpty() ? t.getClass().getName() : t.getClass().getName() + ": " + message;
    }

    private static String trace(Throwable t) {
        StringWriter buffer = new StringWriter();
        t.printStackTrace(new PrintWriter(buffer));
        String text = buffer.toString();
        return text.length() > MAX_TRACE_CHARS ? text.substring(0, MAX_TRACE_CHARS) : text;
    }

    /** The stream the answers go to: file descriptor `fd`, a pipe of its own (or 1, stdout). */
    private static OutputStream frames(int fd) throws ReflectiveOperationException {
        if (fd == 1) {
            // Answers on stdout (a build's check): System.out (the handler's prints) goes to stderr.
            OutputStream out = new FileOutputStream(FileDescriptor.out);
            System.setOut(System.err);
            return out;
        }
        // Java opens no file descriptor by number: set FileDescriptor's own field (the JVM is
        // started with --add-opens java.base/java.io for this).
        FileDescriptor descriptor = new FileDescriptor();
        Field field = FileDescriptor.class.getDeclaredField("fd");
        field.setAccessible(true);
        field.setInt(descriptor, fd);
        return new FileOutputStream(descriptor);
    }

    private static void send(OutputStream out, String message) throws IOException {
        out.write((message + "\n").getBytes(StandardCharsets.UTF_8));
        out.flush();
    }

    /** A small JSON reader and writer: objects become LinkedHashMap, arrays ArrayList. */
    static final class Json {
        private static final int MAX_DEPTH = 512;
        // JSON's one-letter escapes (the letter after the backslash) and what each stands for.
        private static final String ESCAPES = "\"\\/bfnrt";
        private static final String ESCAPED = "\"\\/\b\f\n\r\t";
        private final String text;
        private int pos;

        private Json(String text) {
            this.text = text;
        }

        static Object parse(String text) {
            Json parser = new Json(text);
            Object value = parser.value(0);
            parser.skipSpace();
            if (parser.pos != text.length()) {
                throw parser.error("trailing characters");
            }
            return value;
        }

        static String typeName(Object value) {
            if (value instanceof Map) return "JSON object";
            if (value instanceof List) return "JSON array";
            if (value instanceof String) return "JSON string";
            if (value instanceof Number) return "JSON number";
            if (value instanceof Boolean) return "JSON boolean";
            return value.getClass().getName();
        }

        private IllegalArgumentException error(String what) {
            return new IllegalArgumentException("invalid JSON: " + what + " at offset " + pos);
        }

        private void skipSpace() {
            while (pos < text.length()) {
                char c = text.charAt(pos);
                if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
                pos++;
            }
        }

        private Object value(int depth) {
            if (depth > MAX_DEPTH) throw error("nested too deeply");
            skipSpace();
            if (pos >= text.length()) throw error("unexpected end");
            char c = text.charAt(pos);
            switch (c) {
                case '{': return object(depth);
                case '[': return array(depth);
                case '"': return string();
                case 't': return literal("true", Boolean.TRUE);
                case 'f': return literal("false", Boolean.FALSE);
                case 'n': return literal("null", null);
                default: return number();
            }
        }

        private Object literal(String word, Object value) {
            if (!text.startsWith(word, pos)) throw error("unexpected character");
            pos += word.length();
            return value;
        }

        private Map<String, Object> object(int depth) {
            Map<String, Object> map = new LinkedHashMap<>();
            if (empty('}')) return map;
            do {
                skipSpace();
                if (pos >= text.length() || text.charAt(pos) != '"') throw error("expected a key");
                String key = string();
                skipSpace();
                if (pos >= text.length() || text.charAt(pos) != ':') throw error("expected ':'");
                pos++;
                map.put(key, value(depth + 1));
            } while (another('}'));
            return map;
        }

        private List<Object> array(int depth) {
            List<Object> list = new ArrayList<>();
            if (empty(']')) return list;
            do {
                list.add(value(depth + 1));
            } while (another(']'));
            return list;
        }

        /** Past an object's or array's opening character and any space; true, and past
         *  {@code close} too, when nothing is inside. */
        private boolean empty(char close) {
            pos++;
            skipSpace();
            if (pos < text.length() && text.charAt(pos) == close) {
                pos++;
                return true;
            }
            return false;
        }

        /** After a member: true past a ',' (another follows), false past {@code close}. */
        private boolean another(char close) {
            skipSpace();
            if (pos >= text.length()) throw error("unexpected end");
            char c = text.charAt(pos++);
            if (c == close) return false;
            if (c != ',') throw error("expected ',' or '" + close + "'");
            return true;
        }

        private String string() {
            StringBuilder sb = new StringBuilder();
            pos++;
            while (true) {
                if (pos >= text.length()) throw error("unterminated string");
                char c = text.charAt(pos++);
                if (c == '"') return sb.toString();
                if (c != '\\') {
                    sb.append(c);
                    continue;
                }
                if (pos >= text.length()) throw error("unterminated escape");
                char e = text.charAt(pos++);
                int letter = ESCAPES.indexOf(e);
                if (letter >= 0) {
                    sb.append(ESCAPED.charAt(letter));
                } else if (e == 'u') {
                    if (pos + 4 > text.length()) throw error("bad \\u escape");
                    sb.append((char) Integer.parseInt(text.substring(pos, pos + 4), 16));
                    pos += 4;
                } else {
                    throw error("bad escape");
                }
            }
        }

        private Number number() {
            int start = pos;
            boolean integral = true;
            while (pos < text.length()) {
                char c = text.charAt(pos);
                if (c == '.' || c == 'e' || c == 'E') {
                    integral = false;
                } else if (!(c == '-' || c == '+' || (c >= '0' && c <= '9'))) {
                    break;
                }
                pos++;
            }
            String digits = text.substring(start, pos);
            if (digits.isEmpty()) throw error("unexpected character");
            try {
                if (!integral) return Double.valueOf(digits);
                // The same types Jackson gives a Lambda handler: Integer, then Long, then BigInteger.
                BigInteger big = new BigInteger(digits);
                if (big.bitLength() < 32) return big.intValue();
                if (big.bitLength() < 64) return big.longValue();
                return big;
            } catch (NumberFormatException exc) {
                throw error("bad number");
            }
        }

        static String write(Object value) {
            return write(value, Integer.MAX_VALUE);
        }

        /** `value` as JSON; ResultTooLarge as soon as it grows past `limit` characters. */
        static String write(Object value, int limit) {
            StringBuilder sb = new StringBuilder();
            write(sb, value, 0, limit);
            return sb.toString();
        }

        static String quote(String s) {
            StringBuilder sb = new StringBuilder();
            quote(sb, s);
            return sb.toString();
        }

        private static void quote(StringBuilder sb, String s) {
            sb.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                switch (c) {
                    case '"': sb.append("\\\""); break;
                    case '\\': sb.append("\\\\"); break;
                    case '\n': sb.append("\\n"); break;
                    case '\r': sb.append("\\r"); break;
                    case '\t': sb.append("\\t"); break;
                    default:
                        // Control characters and lone surrogates are escaped so the line stays
                        // one valid UTF-8 JSON document.
                        if (c < 0x20 || Character.isSurrogate(c) && !validPair(s, i)) {
                            sb.append(String.format("\\u%04x", (int) c));
                        } else {
                            sb.append(c);
                        }
                }
            }
            sb.append('"');
        }

        private static boolean validPair(String s, int i) {
            char c = s.charAt(i);
            if (Character.isHighSurrogate(c)) {
                return i + 1 < s.length() && Character.isLowSurrogate(s.charAt(i + 1));
            }
            return i > 0 && Character.isHighSurrogate(s.charAt(i - 1));
        }

        private static void write(StringBuilder sb, Object value, int depth, int limit) {
            if (depth > MAX_DEPTH) {
                throw new IllegalArgumentException("result nested too deeply (a cycle?)");
            }
            if (sb.length() > limit) {
                throw new ResultTooLarge();
            }
            if (value == null) {
                sb.append("null");
            } else if (value instanceof String || value instanceof Character || value instanceof Enum) {
                String text = value instanceof Enum ? ((Enum<?>) value).name() : value.toString();
                if (sb.length() + text.length() > limit) {
                    throw new ResultTooLarge();  // before the copy, not after
                }
                quote(sb, text);
            } else if (value instanceof Boolean) {
                sb.append(value.toString());
            } else if (value instanceof Double || value instanceof Float) {
                double d = ((Number) value).doubleValue();
                if (Double.isNaN(d) || Double.isInfinite(d)) {
                    throw new IllegalArgumentException("result contains " + d + ", which JSON cannot carry");
                }
                sb.append(value.toString());
            } else if (value instanceof BigDecimal) {
                sb.append(((BigDecimal) value).toString());
            } else if (value instanceof Number) {
                sb.append(value.toString());
            } else if (value instanceof Map) {
                sb.append('{');
                boolean first = true;
                for (Map.Entry<?, ?> entry : ((Map<?, ?>) value).entrySet()) {
                    if (!first) sb.append(',');
                    first = false;
                    quote(sb, String.valueOf(entry.getKey()));
                    sb.append(':');
                    write(sb, entry.getValue(), depth + 1, limit);
                }
                sb.append('}');
            } else if (value instanceof Iterable) {
                sb.append('[');
                Iterator<?> it = ((Iterable<?>) value).iterator();
                while (it.hasNext()) {
                    write(sb, it.next(), depth + 1, limit);
                    if (it.hasNext()) sb.append(',');
                }
                sb.append(']');
            } else if (value.getClass().isArray()) {
                sb.append('[');
                int n = Array.getLength(value);
                for (int i = 0; i < n; i++) {
                    if (i > 0) sb.append(',');
                    write(sb, Array.get(value, i), depth + 1, limit);
                }
                sb.append(']');
            } else {
                write(sb, bean(value), depth + 1, limit);
            }
        }

        /** A record's components, or a plain object's public fields and getters, as a map. */
        private static Map<String, Object> bean(Object value) {
            Map<String, Object> map = new LinkedHashMap<>();
            Class<?> cls = value.getClass();
            try {
                if (cls.isRecord()) {
                    for (RecordComponent rc : cls.getRecordComponents()) {
                        map.put(rc.getName(), rc.getAccessor().invoke(value));
                    }
                    return map;
                }
                for (Field f : cls.getFields()) {
                    if (!Modifier.isStatic(f.getModifiers())) map.put(f.getName(), f.get(value));
                }
                for (Method m : cls.getMethods()) {
                    String name = m.getName();
                    if (m.getParameterCount() != 0 || Modifier.isStatic(m.getModifiers())
                            || m.getDeclaringClass() == Object.class) continue;
                    String prop = null;
                    if (name.startsWith("get") && name.length() > 3) {
                        prop = name.substring(3);
                    } else if (name.startsWith("is") && name.length() > 2
                            && (m.getReturnType() == boolean.class || m.getReturnType() == Boolean.class)) {
                        prop = name.substring(2);
                    }
                    if (prop != null) {
                        map.putIfAbsent(Character.toLowerCase(prop.charAt(0)) + prop.substring(1), m.invoke(value));
                    }
                }
            } catch (ReflectiveOperationException exc) {
                throw new IllegalArgumentException("cannot convert " + cls.getName() + " to JSON", exc);
            }
            if (map.isEmpty()) {
                throw new IllegalArgumentException("cannot convert " + cls.getName() + " to JSON");
            }
            return map;
        }
    }
}

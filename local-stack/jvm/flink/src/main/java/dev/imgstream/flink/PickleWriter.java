/*
 * imgstream: Python pickles of strings, ints, lists and pairs, written in the JVM.
 */
package dev.imgstream.flink;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;

/**
 * Writes a pickle (protocol 2) of nested lists, pairs, strings and integers: what a JVM operator
 * sends a Python operator as a {@code PICKLED_BYTE_ARRAY} field (PyFlink unpickles it with
 * {@code pickle.loads}). Build the value with the calls in the order Python reads it, then
 * {@link #toBytes()}.
 *
 * <pre>{@code
 * new PickleWriter().beginList().string("a").integer(1).endList().toBytes();  // ['a', 1]
 * }</pre>
 */
public final class PickleWriter {

    private static final int PROTO = 0x80;
    private static final int MARK = '(';
    private static final int EMPTY_LIST = ']';
    private static final int APPENDS = 'e';
    private static final int TUPLE2 = 0x86;
    private static final int BINUNICODE = 'X';
    private static final int BININT = 'J';
    private static final int LONG1 = 0x8a;
    private static final int STOP = '.';

    private final ByteArrayOutputStream out = new ByteArrayOutputStream(256);

    public PickleWriter() {
        out.write(PROTO);
        out.write(2);
    }

    /** Opens a list: the values written until {@link #endList()} are its items. */
    public PickleWriter beginList() {
        out.write(EMPTY_LIST);
        out.write(MARK);
        return this;
    }

    public PickleWriter endList() {
        out.write(APPENDS);
        return this;
    }

    /** Makes the last two values written one tuple. */
    public PickleWriter pair() {
        out.write(TUPLE2);
        return this;
    }

    public PickleWriter string(String value) {
        byte[] bytes = value.getBytes(StandardCharsets.UTF_8);
        out.write(BINUNICODE);
        int32(bytes.length);
        out.write(bytes, 0, bytes.length);
        return this;
    }

    public PickleWriter integer(long value) {
        if (value == (int) value) {
            out.write(BININT);
            int32((int) value);
        } else {
            out.write(LONG1);
            out.write(8);
            for (int i = 0; i < 8; i++) {
                out.write((int) (value >>> (8 * i)) & 0xff);
            }
        }
        return this;
    }

    /** The pickle of the value written (ends it: write nothing after). */
    public byte[] toBytes() {
        out.write(STOP);
        return out.toByteArray();
    }

    private void int32(int value) {
        for (int i = 0; i < 4; i++) {
            out.write((value >>> (8 * i)) & 0xff);
        }
    }
}

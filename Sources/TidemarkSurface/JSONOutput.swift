import Foundation

/// The one way Tidemark's programs write JSON: every `--json` output and
/// every control-socket message goes through `JSONOutput.encode`, so key
/// order (sorted), escaping and number formatting are the same everywhere
/// and a golden test of one model holds for every printer of it.
///
/// Output is one line (no pretty printing): `--json` is for programs
/// (`jq`, `python3 -m json.tool` make it readable), and the control socket
/// frames a message as one line. Slashes are not escaped, so device paths
/// read as they are. Keys are sorted, so the output of a model is stable
/// whatever order its properties are declared in.
public enum JSONOutput {
    /// A fresh encoder with Tidemark's settings (an encoder is not shared
    /// between threads: `JSONEncoder` is not `Sendable`).
    public static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        e.nonConformingFloatEncodingStrategy = .throw
        return e
    }

    /// `value` as one line of JSON text, without a newline.
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        try encoder().encode(value)
    }

    /// `value` as one line of JSON text followed by a newline: what a
    /// `--json` command prints.
    public static func line<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try encode(value), as: UTF8.self) + "\n"
    }
}

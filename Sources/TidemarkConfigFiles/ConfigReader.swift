import Foundation
import Yams

/// The keys a configuration file may hold: the top-level keys and, for each section
/// (a top-level key whose value is a map), the keys inside it. Used for did-you-mean hints.
struct ConfigSchema: Sendable {
    /// Every top-level key, sections included, in the order of the shipped file.
    var topLevel: [String]
    /// Every section and its keys, in the order of the shipped file.
    var sections: [(name: String, keys: [String])]

    func keys(in section: String?) -> [String] {
        guard let section else { return topLevel }
        return sections.first { $0.name == section }?.keys ?? []
    }
}

/// One `key: value` pair of a map, with the line of its key.
struct ConfigEntry {
    var key: String
    var line: Int?
    var value: Node
}

/// Walks the YAML node tree of a configuration file, keeping every value's line so that
/// each error can name `file:line` and the key. Knows nothing about any daemon's keys
/// beyond its `schema`; the per-daemon parsers drive it.
struct ConfigReader {
    let path: String
    let text: String
    let schema: ConfigSchema
    /// A key to show in examples, e.g. `chunk_size: 64k`.
    let exampleEntry: String

    /// The document's top-level entries; nil for an empty document (or one with only comments).
    func topLevelEntries() throws -> [ConfigEntry]? {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw translate(error)
        }
        guard let root, !isNull(root) else { return nil }
        guard case .mapping(let mapping) = root else {
            throw ConfigError(code: .notAMap, file: path, line: root.mark?.line ?? 1, key: nil,
                              message: "the file must be a map of keys, found \(describeWithoutContent(root))",
                              hint: "write one 'key: value' per line, e.g. '\(exampleEntry)'")
        }
        return try mapping.map { keyNode, value in
            ConfigEntry(key: try keyName(keyNode), line: keyNode.mark?.line, value: value)
        }
    }

    /// The entries of a section (`name:` followed by an indented map); nil when the section is empty.
    /// `example` shows how to write it, e.g. `mirror:\n  to: /dev/sdc`.
    func sectionEntries(_ value: Node, name: String, keyLine: Int?, example: String) throws -> [ConfigEntry]? {
        if isNull(value) { return nil }
        guard case .mapping(let mapping) = value else {
            let keys = schema.keys(in: name)
            let expected = keys.count == 2
                ? "a map with '\(keys[0])' and '\(keys[1])'"
                : "a map of \(name) keys (\(keys.joined(separator: ", ")))"
            throw ConfigError(code: .wrongType, file: path, line: value.mark?.line ?? keyLine, key: name,
                              message: "expected \(expected), found \(describe(value))",
                              hint: "write it indented under '\(name):', e.g. '\(example.replacingOccurrences(of: "\n", with: "\\n"))'")
        }
        return try mapping.map { keyNode, item in
            ConfigEntry(key: try keyName(keyNode), line: keyNode.mark?.line, value: item)
        }
    }

    /// Reads a scalar value and runs `check` on its text, turning failures into located errors.
    /// A missing value (`key:` alone) is an error.
    func validated<T>(_ entry: ConfigEntry, key: String, expected: String,
                      _ check: (String) throws -> T) throws -> T {
        try validated(entry.value, key: key, keyLine: entry.line, expected: expected, check)
    }

    /// Like `validated`, but a missing value (`key:`, `key: ~`) means nil ("not set").
    func optional<T>(_ entry: ConfigEntry, key: String, expected: String,
                     _ check: (String) throws -> T?) throws -> T? {
        if isNull(entry.value) { return nil }
        return try validated(entry.value, key: key, keyLine: entry.line, expected: expected, check)
    }

    func validated<T>(_ node: Node, key: String, keyLine: Int?, expected: String,
                      _ check: (String) throws -> T) throws -> T {
        let line = node.mark?.line ?? keyLine
        guard case .scalar(let scalar) = node else {
            throw ConfigError(code: .wrongType, file: path, line: line, key: key,
                              message: "expected \(expected), found \(describe(node))",
                              hint: unquotedIPv6Hint(line: line) ?? "write a single value on the same line as the key")
        }
        if isNull(node) {
            throw ConfigError(code: .invalidValue, file: path, line: keyLine ?? line, key: key,
                              message: "has no value", hint: "give \(expected), or delete the line to use the default")
        }
        do {
            return try check(scalar.string)
        } catch let invalid as InvalidValue {
            throw ConfigError(code: .invalidValue, file: path, line: line, key: key,
                              message: invalid.message, hint: invalid.hint)
        }
    }

    private func keyName(_ node: Node) throws -> String {
        guard case .scalar(let scalar) = node, !isNull(node) else {
            throw ConfigError(code: .wrongType, file: path, line: node.mark?.line, key: nil,
                              message: "a key must be a plain name, found \(describe(node))",
                              hint: "write 'key: value', e.g. '\(exampleEntry)'")
        }
        return scalar.string
    }

    /// The error for a key the schema does not know, with the most useful hint we can find:
    /// a close match in the same place, the section the key belongs to, or a close match elsewhere.
    func unknownKey(_ entry: ConfigEntry, section: String?) -> ConfigError {
        let key = entry.key
        let dotted = section.map { "\($0).\(key)" } ?? key
        let known = schema.keys(in: section)
        let normalized = key.lowercased().replacingOccurrences(of: "-", with: "_")
        let hint: String
        if let close = closestMatch(key, among: known) {
            hint = "did you mean '\(section.map { "\($0)." } ?? "")\(close)'?"
        } else if section == nil, let home = schema.sections.first(where: { $0.keys.contains(normalized) }) {
            hint = "'\(key)' belongs under '\(home.name):'"
        } else if section != nil, schema.topLevel.contains(normalized) {
            hint = "'\(key)' is a top-level key; move it out of '\(section!):'"
        } else if let other = schema.sections.first(where: { $0.name != section && closestMatch(key, among: $0.keys) != nil }),
                  let close = closestMatch(key, among: other.keys) {
            hint = "did you mean '\(other.name).\(close)'?"
        } else {
            hint = "known keys: " + (section == nil ? known : known.map { "\(section!).\($0)" }).joined(separator: ", ")
        }
        return ConfigError(code: .unknownKey, file: path, line: entry.line, key: dotted, message: "not a known key", hint: hint)
    }

    func isNull(_ node: Node) -> Bool {
        guard case .scalar(let scalar) = node, scalar.style == .plain || scalar.style == .any else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    /// What a whole file holds when it is not a map, without quoting it:
    /// a file that is a single value is likely another file given by
    /// mistake (a replication key, a PEM private key), whose content must
    /// not reach the log.
    func describeWithoutContent(_ node: Node) -> String {
        if case .scalar(let scalar) = node, !isNull(node) {
            return "a single value of \(scalar.string.count) characters (not shown: is this the configuration file?)"
        }
        return describe(node)
    }

    func describe(_ node: Node) -> String {
        switch node {
        case .mapping: return "a map"
        case .sequence: return "a list"
        case .alias: return "an alias"
        case .scalar(let scalar): return isNull(node) ? "nothing" : "'\(scalar.string)'"
        }
    }

    /// Turns a Yams error into a one-line `file:line` error.
    private func translate(_ error: YamlError) -> ConfigError {
        let syntaxHint = "check the indentation (spaces, not tabs) and that each key is followed by ': '"
        func syntax(_ line: Int?, _ problem: String, _ context: YamlError.Context?) -> ConfigError {
            var message = "YAML syntax error: \(problem)"
            if let context { message += " (\(context.text) on line \(context.mark.line))" }
            var hint = syntaxHint
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            if let line, line >= 1, line <= lines.count, lines[line - 1].contains("\t") {
                hint = "YAML does not allow tabs for indentation; use spaces"
            } else if let ipv6 = unquotedIPv6Hint(line: line) {
                hint = ipv6
            } else if problem.contains("another document") {
                hint = "the file must hold a single YAML document; remove the extra '---'"
            } else if problem.contains("undefined alias") {
                hint = "define the anchor (&name) before referring to it (*name)"
            }
            return ConfigError(code: .syntax, file: path, line: line, key: nil, message: message, hint: hint)
        }
        switch error {
        case let .scanner(context, problem, mark, _),
             let .parser(context, problem, mark, _),
             let .composer(context, problem, mark, _):
            return syntax(mark.line, problem, context)
        case let .reader(problem, offset, _, _):
            let line = offset.map { offset in
                text.prefix(offset).reduce(1) { $1 == "\n" ? $0 + 1 : $0 }
            }
            return syntax(line, problem, nil)
        case let .duplicatedKeysInMapping(duplicates, context):
            let key = duplicates.first ?? "?"
            let lines = linesDefining(key: key, from: context.mark.line)
            let line = lines.count >= 2 ? lines[1] : context.mark.line
            return ConfigError(code: .duplicateKey, file: path, line: line, key: key,
                               message: "is set more than once (first on line \(lines.first ?? context.mark.line))",
                               hint: "keep one of them")
        default:
            return ConfigError(code: .syntax, file: path, line: nil, key: nil,
                               message: "YAML error: \(error)", hint: syntaxHint)
        }
    }

    /// An unquoted `[v6]:port` is YAML flow-list syntax, so it arrives as a list or a syntax error;
    /// when line `line` looks like one, say to quote it.
    private func unquotedIPv6Hint(line: Int?) -> String? {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard let line, line >= 1, line <= lines.count else { return nil }
        let body = lines[line - 1]
        guard let colon = body.range(of: ": ") else { return nil }
        let value = body[colon.upperBound...].drop(while: { $0 == " " })
        guard value.hasPrefix("["), value.contains("::") || value.contains("]:") else { return nil }
        let example = value.split(separator: "#").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? String(value)
        return "put an IPv6 address in brackets inside quotes, e.g. \"\(example)\"; unquoted, [ ] is a YAML list"
    }

    /// Lines (1-based) at the same indentation as `firstLine` that define `key:`. Yams reports a
    /// duplicate key only at its first occurrence; the operator needs to see the second one too.
    private func linesDefining(key: String, from firstLine: Int) -> [Int] {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard firstLine >= 1, firstLine <= lines.count else { return [] }
        func indent(_ s: Substring) -> Int { s.prefix(while: { $0 == " " }).count }
        func defines(_ s: Substring) -> Bool {
            let body = s.drop(while: { $0 == " " })
            for form in [key, "'\(key)'", "\"\(key)\""] where body.hasPrefix(form) {
                let rest = body.dropFirst(form.count).drop(while: { $0 == " " })
                if rest.hasPrefix(":") { return true }
            }
            return false
        }
        let level = indent(lines[firstLine - 1])
        var found: [Int] = []
        for index in (firstLine - 1)..<lines.count {
            let line = lines[index]
            let trimmed = line.drop(while: { $0 == " " })
            if index > firstLine - 1, !trimmed.isEmpty, !trimmed.hasPrefix("#"), indent(line) < level { break }
            if indent(line) == level, defines(line) { found.append(index + 1) }
        }
        return found
    }
}

/// Reads a configuration file given explicitly: missing, a directory, unreadable or not UTF-8 are errors.
/// `daemon` and `defaultPath` go into the hint (`without --config the agent reads /etc/tidemark/agent.yaml`).
func readConfigFile(_ path: String, daemon: String, defaultPath: String) throws -> String {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
        throw ConfigError(code: .fileNotFound, file: path, line: nil, key: nil,
                          message: "no such file",
                          hint: "check the path given to --config (without --config the \(daemon) reads \(defaultPath))")
    }
    if isDirectory.boolValue {
        throw ConfigError(code: .unreadable, file: path, line: nil, key: nil,
                          message: "is a directory, not a configuration file",
                          hint: "give the path of the YAML file, e.g. \(defaultPath)")
    }
    let data: Data
    do {
        data = try Data(contentsOf: URL(fileURLWithPath: path))
    } catch {
        throw ConfigError(code: .unreadable, file: path, line: nil, key: nil,
                          message: "cannot be read (\(error.localizedDescription))",
                          hint: "check the file's permissions")
    }
    guard let text = String(data: data, encoding: .utf8) else {
        throw ConfigError(code: .unreadable, file: path, line: nil, key: nil,
                          message: "is not UTF-8 text",
                          hint: "the configuration must be a UTF-8 YAML file")
    }
    return text
}

/// Whether `path` names an existing file (or directory); `loadDefault` falls back to the defaults when not.
func configFileExists(_ path: String) -> Bool {
    var isDirectory: ObjCBool = false
    return FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
}

/// This machine's host name (`gethostname`), or "localhost" when it cannot be read.
func currentHostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
    let name = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    return name.isEmpty ? "localhost" : name
}

/// `prefix` + the host name, made a valid identifier: characters outside [A-Za-z0-9._-]
/// become '-', and the result is cut to 64 characters.
func hostDerivedID(prefix: String, hostName: String = currentHostName()) -> String {
    let cleaned = String(hostName.unicodeScalars.map { Validate.isIdentifierScalar($0) ? Character($0) : "-" })
    return String((prefix + (cleaned.isEmpty ? "localhost" : cleaned)).prefix(Validate.identifierMaxLength))
}

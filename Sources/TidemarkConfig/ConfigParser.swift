import Foundation
import Yams

/// Walks the YAML node tree of an agent configuration, keeping every value's line so that
/// each error can name `file:line` and the key.
struct ConfigParser {
    let path: String
    let text: String

    func parse() throws -> AgentConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw translate(error)
        }
        var config = AgentConfig.defaults
        guard let root, !isNull(root) else { return config }  // empty file: all defaults
        guard case .mapping(let mapping) = root else {
            throw ConfigError(code: .notAMap, file: path, line: root.mark?.line ?? 1, key: nil,
                              message: "the file must be a map of keys, found \(describe(root))",
                              hint: "write one 'key: value' per line, e.g. 'chunk_size: 64k'")
        }
        for (keyNode, value) in mapping {
            let key = try keyName(keyNode, section: nil)
            let keyLine = keyNode.mark?.line
            switch key {
            case "state_dir":
                config.stateDir = try validated(value, key: key, keyLine: keyLine, expected: "a directory path",
                                                Validate.stateDir)
            case "chunk_size":
                config.chunkSizeBytes = try validated(value, key: key, keyLine: keyLine, expected: "a size such as 64k",
                                                      Validate.chunkSize)
            case "disks":
                config.disks = try disks(value, keyLine: keyLine)
            case "drain_interval_ms":
                config.drainIntervalMs = try validated(value, key: key, keyLine: keyLine,
                                                       expected: "a number of milliseconds", Validate.intervalMs)
            case "mirror":
                try mirror(value, keyLine: keyLine, into: &config)
            case "log_level":
                config.logLevel = try validated(value, key: key, keyLine: keyLine, expected: "a log level",
                                                Validate.logLevel)
            default:
                throw unknownKey(key, line: keyLine, section: nil)
            }
        }
        return config
    }

    // MARK: Sections

    private func disks(_ value: Node, keyLine: Int?) throws -> [String] {
        if isNull(value) { return [] }
        guard case .sequence(let sequence) = value else {
            var hint = "write a list, e.g. disks: [/dev/sdb, /dev/sdc1]"
            if case .scalar(let scalar) = value { hint = "write a list, e.g. disks: [\(scalar.string)]" }
            throw ConfigError(code: .wrongType, file: path, line: value.mark?.line ?? keyLine, key: "disks",
                              message: "expected a list of block devices, found \(describe(value))", hint: hint)
        }
        var result: [String] = []
        var firstLine: [String: Int] = [:]
        for item in sequence {
            let line = item.mark?.line ?? keyLine
            guard case .scalar(let scalar) = item, !isNull(item) else {
                throw ConfigError(code: .wrongType, file: path, line: line, key: "disks",
                                  message: "expected a block device path, found \(describe(item))",
                                  hint: "name each block device by its path, e.g. /dev/sdb")
            }
            let disk: String
            do {
                disk = try Validate.disk(scalar.string)
            } catch let invalid as InvalidValue {
                throw ConfigError(code: .invalidValue, file: path, line: line, key: "disks",
                                  message: invalid.message, hint: invalid.hint)
            }
            if let first = firstLine[disk] {
                throw ConfigError(code: .invalidValue, file: path, line: line, key: "disks",
                                  message: "'\(disk)' is listed twice (also on line \(first))", hint: "list each disk once")
            }
            firstLine[disk] = line ?? 0
            result.append(disk)
        }
        return result
    }

    private func mirror(_ value: Node, keyLine: Int?, into config: inout AgentConfig) throws {
        if isNull(value) { return }
        guard case .mapping(let mapping) = value else {
            throw ConfigError(code: .wrongType, file: path, line: value.mark?.line ?? keyLine, key: "mirror",
                              message: "expected a map with 'to' and 'interval_ms', found \(describe(value))",
                              hint: "write it indented under 'mirror:', e.g. 'mirror:\\n  to: /dev/sdc'")
        }
        for (keyNode, item) in mapping {
            let key = try keyName(keyNode, section: "mirror")
            let line = keyNode.mark?.line
            switch key {
            case "to":
                if isNull(item) {
                    config.mirrorTo = nil
                } else {
                    config.mirrorTo = try validated(item, key: "mirror.to", keyLine: line,
                                                    expected: "a file or block device path", Validate.mirrorTarget)
                }
            case "interval_ms":
                config.mirrorIntervalMs = try validated(item, key: "mirror.interval_ms", keyLine: line,
                                                        expected: "a number of milliseconds", Validate.intervalMs)
            default:
                throw unknownKey(key, line: line, section: "mirror")
            }
        }
    }

    // MARK: Helpers

    /// Reads a scalar value and runs `check` on its text, turning failures into located errors.
    private func validated<T>(_ node: Node, key: String, keyLine: Int?, expected: String,
                              _ check: (String) throws -> T) throws -> T {
        let line = node.mark?.line ?? keyLine
        guard case .scalar(let scalar) = node else {
            throw ConfigError(code: .wrongType, file: path, line: line, key: key,
                              message: "expected \(expected), found \(describe(node))",
                              hint: "write a single value on the same line as the key")
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

    private func keyName(_ node: Node, section: String?) throws -> String {
        guard case .scalar(let scalar) = node, !isNull(node) else {
            throw ConfigError(code: .wrongType, file: path, line: node.mark?.line, key: nil,
                              message: "a key must be a plain name, found \(describe(node))",
                              hint: "write 'key: value', e.g. 'chunk_size: 64k'")
        }
        return scalar.string
    }

    private func unknownKey(_ key: String, line: Int?, section: String?) -> ConfigError {
        let dotted = section.map { "\($0).\(key)" } ?? key
        let known = section == nil ? AgentConfig.knownKeys : AgentConfig.knownMirrorKeys
        let hint: String
        if let close = closestMatch(key, among: known) {
            hint = "did you mean '\(section.map { "\($0)." } ?? "")\(close)'?"
        } else if section == nil, AgentConfig.knownMirrorKeys.contains(key) {
            hint = "'\(key)' belongs under 'mirror:'"
        } else if section != nil, AgentConfig.knownKeys.contains(key) {
            hint = "'\(key)' is a top-level key; move it out of '\(section!):'"
        } else {
            hint = "known keys: " + (section == nil ? known : known.map { "\(section!).\($0)" }).joined(separator: ", ")
        }
        return ConfigError(code: .unknownKey, file: path, line: line, key: dotted, message: "not a known key", hint: hint)
    }

    private func isNull(_ node: Node) -> Bool {
        guard case .scalar(let scalar) = node, scalar.style == .plain || scalar.style == .any else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(scalar.string)
    }

    private func describe(_ node: Node) -> String {
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

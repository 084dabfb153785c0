import Foundation
import Testing

/// The repository root, from this file's path.
func repositoryRoot() -> URL {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
}

/// Checks that a shipped configuration file names every key — top-level keys at the left margin,
/// section keys indented under their section — and that every key other than a section header
/// has a comment line right above it.
func expectEveryKeyCommented(lines: [String], topLevel: [String], sections: [(name: String, keys: [String])],
                             sourceLocation: SourceLocation = #_sourceLocation) {
    let sectionNames = Set(sections.map(\.name))
    func commented(_ index: Int, _ key: String) {
        #expect(index > 0 && lines[index - 1].trimmingCharacters(in: .whitespaces).hasPrefix("#"),
                "\(key) has no comment", sourceLocation: sourceLocation)
    }
    for key in topLevel {
        let index = lines.firstIndex { $0.hasPrefix("\(key):") }
        #expect(index != nil, "shipped file lacks \(key)", sourceLocation: sourceLocation)
        if let index, !sectionNames.contains(key) { commented(index, key) }
    }
    for (name, keys) in sections {
        guard let start = lines.firstIndex(where: { $0.hasPrefix("\(name):") }) else { continue }
        let end = lines[(start + 1)...].firstIndex { !$0.isEmpty && !$0.hasPrefix(" ") } ?? lines.count
        for key in keys {
            let index = lines[(start + 1)..<end].firstIndex { $0.hasPrefix("  \(key):") }
            #expect(index != nil, "shipped file lacks \(name).\(key)", sourceLocation: sourceLocation)
            if let index { commented(index, "\(name).\(key)") }
        }
    }
}

import Foundation
import Testing
import TidemarkWire
@testable import TidemarkAgentCore

@Suite struct EpochHistoryTests {
    static func id(_ b: UInt8) -> [UInt8] { [UInt8](repeating: b, count: SegmentLineage.idBytes) }

    @Test func eachEpochNamesTheOneThatOwnsTheSequenceBeforeIt() {
        var h = EpochHistory()
        #expect(h.begin(Self.id(1), start: 1).previous == .none)
        #expect(h.begin(Self.id(2), start: 50).previous == .known(id: Self.id(1), start: 1))
        #expect(h.begin(Self.id(3), start: 61).previous == .known(id: Self.id(2), start: 50))
        // A server that lost acknowledged segments: renumbering at 40 drops
        // the epochs that started at or after it (they own nothing stored).
        #expect(h.begin(Self.id(4), start: 40).previous == .known(id: Self.id(1), start: 1))
        #expect(h.entries.map(\.start) == [1, 40])
        // Starting over at 1 (an empty target) forgets everything.
        #expect(h.begin(Self.id(5), start: 1).previous == .none)
        #expect(h.entries.map(\.start) == [1])
        // No record at all of what came before: unknown.
        var empty = EpochHistory()
        #expect(empty.begin(Self.id(6), start: 9).previous == .unknown)
    }

    @Test func bounded() {
        var h = EpochHistory()
        for i in 1...(EpochHistory.entriesMax + 10) { _ = h.begin(Self.id(UInt8(i % 256)), start: UInt64(i)) }
        #expect(h.entries.count == EpochHistory.entriesMax)
        #expect(h.entries.last?.start == UInt64(EpochHistory.entriesMax + 10))
    }

    @Test func storedDurablyAndDamageIsReportedNotTrusted() throws {
        let dir = NSTemporaryDirectory() + "epochs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = EpochHistory.path(hrlPath: dir + "/sdb.hrl")
        #expect(path == dir + "/sdb.epochs")
        var warnings: [String] = []
        #expect(EpochHistory.load(path) { warnings.append($0) } == EpochHistory())
        #expect(warnings.isEmpty, "a missing file is an empty history")
        var h = EpochHistory()
        _ = h.begin(Self.id(1), start: 1)
        _ = h.begin(Self.id(2), start: 7)
        try h.store(path)
        #expect(EpochHistory.load(path) { warnings.append($0) } == h)
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        // Every single-byte change is caught (magic, version, count, entries, CRC).
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        for at in 0..<bytes.count {
            var damaged = bytes
            damaged[at] ^= 0x10
            try damaged.write(to: URL(fileURLWithPath: path))
            warnings = []
            #expect(EpochHistory.load(path) { warnings.append($0) } == EpochHistory(), "byte \(at)")
            #expect(warnings.count == 1, "byte \(at)")
        }
        try Data(bytes.prefix(10)).write(to: URL(fileURLWithPath: path))
        #expect(EpochHistory.load(path) { warnings.append($0) } == EpochHistory())
    }
}

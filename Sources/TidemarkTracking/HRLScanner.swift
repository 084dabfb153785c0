import TidemarkSystem

/// Full validation of a `.hrl` file: the header slots, the file size, and
/// both slots of every bitmap page. `open` stops at the first problem;
/// `verify` goes on and lists them all.
enum HRLScanner {
    struct Result {
        var header: HRLHeader?
        var pages: [TrackingFile.PageMeta] = []
        var problems: [TrackingFileError] = []
        var omittedProblems = 0
        var notes: [String] = []
        var omittedNotes = 0
    }

    /// Limits on what one verify reports, so a wrecked 64 MiB file does not
    /// produce a 64 MiB report.
    static let problemsMax = 1000
    static let notesMax = 1000
    /// Logical pages per read while scanning: 256 KiB.
    static let batchPages = 32

    static func scan(fd: FileDescriptor, path: String, stopAtFirstProblem: Bool,
                     buildPageTable: Bool) throws -> Result {
        var r = Result()
        /// Records a problem; true when the scan should stop.
        func problem(_ kind: TrackingFileError.Kind, _ detail: String) -> Bool {
            if r.problems.count < problemsMax {
                r.problems.append(TrackingFileError(kind, path: path, detail: detail))
            } else {
                r.omittedProblems += 1
            }
            return stopAtFirstProblem
        }
        func note(_ text: String) {
            if r.notes.count < notesMax { r.notes.append(text) } else { r.omittedNotes += 1 }
        }

        let size = UInt64(try fd.stat().st_size)
        if size == 0 {
            _ = problem(.notATrackingFile, "the file is empty (0 bytes)")
            return r
        }

        // MARK: Header
        let ps = HRLFormat.pageSize
        let headerBytes = AlignedBuffer(count: 2 * ps)  // zero-filled: a short file reads as zeros
        try fd.read(into: headerBytes.bytes, at: 0)
        let slots = (0...1).map { HRLFormat.decodeHeader(UnsafeRawBufferPointer(headerBytes.slice($0 * ps, ps)), slot: $0) }
        for (slot, s) in slots.enumerated() {
            if case .unsupported(let v) = s {
                // Falling back to an older slot would roll back what the newer writer did.
                _ = problem(.unsupportedVersion, "header slot \(slot): format version \(v); this build reads versions \(HRLFormat.oldestReadableVersion) to \(HRLFormat.version)")
                return r
            }
        }
        var current: (header: HRLHeader, slot: Int)?
        for (slot, s) in slots.enumerated() {
            if case .valid(let h) = s, h.generation > current?.header.generation ?? 0 { current = (h, slot) }
        }
        func describe(_ s: HRLFormat.HeaderSlot) -> String {
            switch s {
            case .empty: "never written"
            case .foreign: "no .hrl magic"
            case .unsupported(let v): "format version \(v)"
            case .invalid(let why): why
            case .valid(let h): "valid, generation \(h.generation)"
            }
        }
        guard let current else {
            let anyMagic = slots.contains { if case .invalid = $0 { true } else { false } }
            if anyMagic {
                _ = problem(.corrupt, "header: no valid slot (slot 0: \(describe(slots[0])); slot 1: \(describe(slots[1])))")
            } else {
                _ = problem(.notATrackingFile, "no .hrl magic in either header slot (the file is \(size) bytes)")
            }
            return r
        }
        let other = 1 - current.slot
        switch slots[other] {
        case .invalid, .foreign:
            note("header slot \(other): \(describe(slots[other])) — ignored, slot \(current.slot) (generation \(current.header.generation)) is current; expected after a crash during a header write")
        default:
            break
        }
        let header = current.header
        r.header = header

        // MARK: Size
        let expected = header.fileSizeBytes
        if size != expected {
            let what = size < expected ? "truncated" : "extended"
            if problem(.corrupt, "file size is \(size) bytes, but \(header.bitmapPages) bitmap pages need exactly \(expected) bytes (\(what))") {
                return r
            }
        }

        // MARK: Bitmap pages
        let context = HRLFormat.PageContext(binding: HRLFormat.binding(header.fileUUID),
                                            wordCount: header.wordCount, nrChunks: header.nrChunks)
        if buildPageTable { r.pages.reserveCapacity(Int(header.bitmapPages)) }
        let batch = AlignedBuffer(count: batchPages * 2 * ps)
        var page: UInt64 = 0
        var missingFrom: UInt64?
        func describe(_ s: HRLFormat.BitmapSlot) -> String {
            switch s {
            case .empty: "never written"
            case .invalid(let why): why
            case .valid(let seq, _): "valid, sequence \(seq)"
            }
        }
        /// Why a slot beside a valid one (holding `seq`) is not valid, or nil if
        /// that is normal. Written slots never go back to all zero, so "never
        /// written" is normal only beside sequence 1 (a page not updated since
        /// creation); beside a later one it is damage like any other.
        func notValid(_ s: HRLFormat.BitmapSlot, besideSequence seq: UInt64) -> String? {
            switch s {
            case .invalid(let why): why
            case .empty where seq > 1: "never written (all zero) beside sequence \(seq)"
            default: nil
            }
        }
        while page < header.bitmapPages && missingFrom == nil {
            let n = Int(min(UInt64(batchPages), header.bitmapPages - page))
            let got = try fd.read(into: batch.slice(0, n * 2 * ps), at: HRLFormat.bitmapSlotOffset(page: page, slot: 0))
            for k in 0..<n {
                let p = page + UInt64(k)
                if (k + 1) * 2 * ps > got {
                    missingFrom = p
                    break
                }
                let a = HRLFormat.checkBitmapSlot(UnsafeRawBufferPointer(batch.slice(k * 2 * ps, ps)), page: p, slot: 0, context)
                let b = HRLFormat.checkBitmapSlot(UnsafeRawBufferPointer(batch.slice(k * 2 * ps + ps, ps)), page: p, slot: 1, context)
                var chosen: TrackingFile.PageMeta?
                switch (a, b) {
                case (.valid(let sa, let pa), .valid(let sb, let pb)):
                    // Parity (A odd, B even) makes equal sequences impossible.
                    chosen = sa > sb ? .init(sequence: sa, popcount: pa, slot: 0) : .init(sequence: sb, popcount: pb, slot: 1)
                case (.valid(let seq, let pop), _), (_, .valid(let seq, let pop)):
                    // One valid slot: it is current. The other may be torn only
                    // while an update was in flight; otherwise it is damage.
                    let current = { if case .valid = a { 0 } else { 1 } }()
                    let (cur, oth) = current == 0 ? ("A", "B") : ("B", "A")
                    chosen = .init(sequence: seq, popcount: pop, slot: UInt8(current))
                    if let why = notValid(current == 0 ? b : a, besideSequence: seq) {
                        if header.updateInFlight {
                            note("bitmap page \(p) slot \(oth): \(why) — ignored, slot \(cur) (sequence \(seq)) is current; expected after a crash during a write")
                        } else if problem(.corrupt, "bitmap page \(p) slot \(oth): \(why), and no update was in flight: the storage damaged a written page, which may have held its newest bits") {
                            return r
                        }
                    }
                default:
                    let bothChecksums = [a, b].allSatisfy { if case .invalid(let w) = $0 { w.hasPrefix("bad checksum") } else { false } }
                    let detail = bothChecksums
                        ? "bitmap page \(p): both slots fail their checksum"
                        : "bitmap page \(p): no valid slot (slot A: \(describe(a)); slot B: \(describe(b)))"
                    if problem(.corrupt, detail) { return r }
                }
                if buildPageTable, let chosen { r.pages.append(chosen) }
            }
            page += UInt64(n)
        }
        if let m = missingFrom {
            let range = m + 1 == header.bitmapPages ? "page \(m) is" : "pages \(m)...\(header.bitmapPages - 1) are"
            if problem(.corrupt, "bitmap \(range) missing: the file ends at byte \(size)") { return r }
        }
        if r.omittedNotes > 0 { r.notes.append("… and \(r.omittedNotes) more notes") }
        return r
    }
}

import TidemarkSurface
import TidemarkSystem
import TidemarkTracking

/// What a command printed and how it ended. The executable writes `output` to stdout,
/// `errorOutput` to stderr and exits with `exitCode`; tests look at all three.
public struct CommandResult: Sendable, Equatable {
    public var output: String
    public var errorOutput: String
    public var exitCode: Int32

    public init(output: String = "", errorOutput: String = "", exitCode: Int32 = ToolExit.ok) {
        self.output = output
        self.errorOutput = errorOutput
        self.exitCode = exitCode
    }

    static func failure(_ failure: ToolFailure) -> CommandResult {
        CommandResult(errorOutput: "tidemark-bitmap: " + failure.message + "\n", exitCode: failure.exitCode)
    }
}

/// The commands of `tidemark-bitmap`, as functions returning their output.
public enum BitmapTool {
    /// Default and limits of `map --width` (cells per row).
    public static let mapWidthDefault = 64
    public static let mapWidthRange = 8...1024
    /// Most rows of the terminal map; the chunks per cell grow to fit.
    public static let mapRowsMax = 32

    // MARK: show

    /// Header, state, counts; with the live kernel map unless `hrlOnly`.
    public static func show(path: String, hrlOnly: Bool = false, json: Bool = false,
                            context: ToolContext = .host) -> CommandResult {
        let file: LoadedTrackingFile
        do {
            file = try LoadedTrackingFile.load(path, includeLive: !hrlOnly, context: context)
        } catch {
            return .failure(error)
        }
        return json ? jsonResult(showReport(file)) : CommandResult(output: showText(file))
    }

    private static func showText(_ file: LoadedTrackingFile) -> String {
        let h = file.header
        var rows: [(String, String)] = []
        func row(_ label: String, _ value: String) { rows.append((label, value)) }
        let hrlDirty = file.hrl.popcount

        row("format", "v\(h.formatVersion) (header generation \(h.generation))")
        row("state", h.state.description)
        row("resync reason", "\(h.reason.rawValue) \(h.reason) — \(h.reason.explanation)")
        if !h.reasonText.isEmpty { row("reason text", h.reasonText) }
        row("disk id", h.diskID.isEmpty ? "(none)" : h.diskID)
        row("disk identity", h.diskIdentity.isEmpty ? "(none)" : h.diskIdentity)
        row("disk size", "\(h.diskSizeBytes) bytes (\(Format.bytes(h.diskSizeBytes)))")
        row("chunk size", "\(h.chunkSizeBytes) bytes (\(Format.bytes(UInt64(h.chunkSizeBytes))))")
        row("chunks", "\(h.nrChunks) (\(h.bitmapPages) bitmap page\(h.bitmapPages == 1 ? "" : "s"))")
        row("dirty in .hrl", dirtySummary(hrlDirty, bytes: file.dirtyBytes(file.hrl), of: h.nrChunks))
        row("drain seq", "\(h.drainSeq)")
        row("clear seq", "\(h.clearSeq)")
        row("created", Format.time(unixNs: h.createdUnixNs))
        row("state changed", Format.time(unixNs: h.stateChangedUnixNs))
        row("boot id", h.bootID.isEmpty ? "(none)" : h.bootID)
        if h.hasSealNonce { row("shutdown seal", "nonce \(h.sealNonceHex) (docs/shutdown-seal.md)") }
        row("target id", h.targetID.isEmpty ? "(none)" : h.targetID)
        row("file uuid", h.fileUUIDString)

        var notes: [String] = []
        switch file.live {
        case .skipped:
            row("live tracking", "not consulted (--hrl-only)")
        case .notTracked:
            row("live tracking", "no tracer slot for this file on this host; counts are the .hrl's alone")
        case .unavailable(let why):
            row("live tracking", "unavailable (\(why)); counts are the .hrl's alone")
        case .mismatch(let why, let device):
            row("live tracking", "\(device): not combined, geometry differs (\(why))")
        case .tracked(let kernel, let overflow, let device):
            let undrained = file.undrainedOnly
            row("live tracking", "tracked on \(device)")
            row("kernel map", "\(kernel.popcount) undrained chunk\(kernel.popcount == 1 ? "" : "s"), "
                + "\(undrained) of them not yet in the .hrl")
            let total = file.effective
            if overflow {
                row("dirty (total)", dirtySummary(total.popcount, bytes: file.dirtyBytes(total), of: h.nrChunks)
                    + " — the tracer overflowed: the whole disk counts as dirty")
                notes.append("The kernel map's overflow flag is set: some writes could not be recorded bit by bit, "
                             + "so the whole disk counts as dirty until it has been copied again.")
            } else {
                row("dirty (total)", dirtySummary(total.popcount, bytes: file.dirtyBytes(total), of: h.nrChunks)
                    + " — includes \(undrained) undrained chunk\(undrained == 1 ? "" : "s") from the live kernel map")
            }
        }
        if h.state == .resyncRequired {
            notes.append("State is resync-required: the bits above are incomplete; a scan resync will compare every chunk.")
        }

        let width = rows.map(\.0.count).max() ?? 0
        var out = "\(file.path)\n"
        for (label, value) in rows {
            out += "  " + label + String(repeating: " ", count: width - label.count + 2) + value + "\n"
        }
        for note in notes { out += "\n" + note + "\n" }
        return out
    }

    private static func dirtySummary(_ chunks: UInt64, bytes: UInt64, of nrChunks: UInt64) -> String {
        "\(chunks) chunk\(chunks == 1 ? "" : "s") (\(Format.percent(chunks, of: nrChunks))), \(bytes) bytes (\(Format.bytes(bytes)))"
    }

    private static func showReport(_ file: LoadedTrackingFile) -> ShowReport {
        let h = file.header
        let total = file.effective
        var kernel: ShowReport.Kernel?
        switch file.live {
        case .tracked(let map, let overflow, let device):
            kernel = ShowReport.Kernel(device: device, chunks: map.popcount, undrainedChunks: file.undrainedOnly, overflow: overflow)
        case .mismatch(let why, let device):
            kernel = ShowReport.Kernel(device: device, mismatch: why)
        case .unavailable(let why):
            kernel = ShowReport.Kernel(error: why)
        case .skipped, .notTracked:
            break
        }
        return ShowReport(
            path: file.path, formatVersion: h.formatVersion, generation: h.generation, state: h.state.description,
            reason: .init(code: UInt64(h.reason.rawValue), name: h.reason.description, explanation: h.reason.explanation, text: h.reasonText),
            diskID: h.diskID, diskIdentity: h.diskIdentity, diskSize: h.diskSizeBytes, chunkSize: UInt64(h.chunkSizeBytes),
            nrChunks: h.nrChunks, bitmapPages: h.bitmapPages,
            hrlDirtyChunks: file.hrl.popcount, hrlDirtyBytes: file.dirtyBytes(file.hrl),
            live: file.isLive, kernel: Nullable(kernel), overflow: file.overflow,
            dirtyChunks: total.popcount, dirtyBytes: file.dirtyBytes(total),
            dirtyPercent: h.nrChunks == 0 ? 0 : Double(total.popcount) * 100 / Double(h.nrChunks),
            drainSeq: h.drainSeq, clearSeq: h.clearSeq,
            created: Format.time(unixNs: h.createdUnixNs), createdUnixNs: h.createdUnixNs,
            stateChanged: Format.time(unixNs: h.stateChangedUnixNs), stateChangedUnixNs: h.stateChangedUnixNs,
            bootID: h.bootID, sealNonce: h.hasSealNonce ? h.sealNonceHex : "", targetID: h.targetID, fileUUID: h.fileUUIDString)
    }

    /// A `--json` command's result: the report as one JSON line.
    static func jsonResult<T: Encodable>(_ report: T, exitCode: Int32 = ToolExit.ok) -> CommandResult {
        do {
            return CommandResult(output: try JSONOutput.line(report), exitCode: exitCode)
        } catch {
            return .failure(ToolFailure(message: "cannot write the report as JSON: \(error)", exitCode: ToolExit.problem))
        }
    }

    // MARK: extents

    /// The dirty extents, in bytes, sorted and merged; the last one clipped to the disk size.
    public static func extents(path: String, hrlOnly: Bool = false, json: Bool = false,
                               context: ToolContext = .host) -> CommandResult {
        let file: LoadedTrackingFile
        do {
            file = try LoadedTrackingFile.load(path, includeLive: !hrlOnly, context: context)
        } catch {
            return .failure(error)
        }
        let h = file.header
        let bitmap = file.effective
        let extents = ByteExtent.from(bitmap.extents, chunkSizeBytes: h.chunkSizeBytes, diskSizeBytes: h.diskSizeBytes)
        var result = CommandResult()
        if json {
            result = jsonResult(ExtentsReport(path: path, chunkSize: UInt64(h.chunkSizeBytes), diskSize: h.diskSizeBytes,
                                              live: file.isLive, overflow: file.overflow, dirtyChunks: bitmap.popcount,
                                              dirtyBytes: extents.totalBytes, extents: extents.map(ExtentPair.init)))
        } else {
            result.output = extents.map { $0.line + "\n" }.joined()
            if file.overflow {
                result.errorOutput = "tidemark-bitmap: the tracer overflowed on this disk: the whole disk counts as dirty\n"
            }
        }
        return result
    }

    // MARK: map

    /// The density map in the terminal, or with `pngPath` a PNG heat map written there.
    public static func map(path: String, width: Int = mapWidthDefault, pngPath: String? = nil, hrlOnly: Bool = false,
                           context: ToolContext = .host) -> CommandResult {
        guard mapWidthRange.contains(width) else {
            return .failure(ToolFailure(message: "--width \(width) is out of range — use \(mapWidthRange.lowerBound) to "
                                        + "\(mapWidthRange.upperBound) cells per row", exitCode: ToolExit.usage))
        }
        let file: LoadedTrackingFile
        do {
            file = try LoadedTrackingFile.load(path, includeLive: !hrlOnly, context: context)
        } catch {
            return .failure(error)
        }
        let h = file.header
        let bitmap = file.effective
        let chunk = UInt64(h.chunkSizeBytes)
        var summary = "\(path): \(h.nrChunks) chunks of \(Format.bytes(chunk)) (\(Format.bytes(h.diskSizeBytes))), "
            + "\(bitmap.popcount) dirty (\(Format.percent(bitmap.popcount, of: h.nrChunks)))"
        if file.overflow {
            summary += " — the tracer overflowed: the whole disk counts as dirty"
        } else if file.isLive {
            summary += " — includes \(file.undrainedOnly) undrained chunks from the live kernel map"
        }

        if let pngPath {
            let image = HeatMap.render(bitmap)
            do {
                let fd = try FileDescriptor(open: pngPath, [.writeOnly, .create, .truncate], mode: 0o644,
                                            purpose: "writing the PNG heat map")
                try image.png.withUnsafeBytes { try fd.write($0, at: 0) }
            } catch {
                return .failure(ToolFailure(message: "\(pngPath): \(error)", exitCode: ToolExit.problem))
            }
            let cell = image.layout.chunksPerCell
            return CommandResult(output: summary + "\n"
                                 + "wrote \(pngPath): \(image.width)x\(image.height) px, each \(HeatMap.cellPx)x\(HeatMap.cellPx) px cell = "
                                 + "\(cell) chunk\(cell == 1 ? "" : "s") (\(Format.bytes(cell * chunk))); white clean, dark red all dirty, "
                                 + "grey past the end of the disk\n")
        }

        let layout = DensityLayout(nrChunks: h.nrChunks, columns: width, rowsMax: mapRowsMax)
        var out = summary + "\n"
        out += "each cell = \(layout.chunksPerCell) chunk\(layout.chunksPerCell == 1 ? "" : "s") "
            + "(\(Format.bytes(layout.chunksPerCell * chunk))); \(DensityMap.legend)\n"
        out += DensityMap.text(bitmap, chunkSizeBytes: h.chunkSizeBytes, columns: width, rowsMax: mapRowsMax)
        return CommandResult(output: out)
    }

    // MARK: diff

    /// Chunks dirty in A only, in B only, and in both. The `.hrl` contents only (no live map):
    /// typically two copies of one disk's file taken at different times.
    public static func diff(_ pathA: String, _ pathB: String, json: Bool = false) -> CommandResult {
        let a: LoadedTrackingFile, b: LoadedTrackingFile
        do {
            a = try LoadedTrackingFile.load(pathA, includeLive: false, context: .fileOnly)
            b = try LoadedTrackingFile.load(pathB, includeLive: false, context: .fileOnly)
        } catch {
            return .failure(error)
        }
        let ha = a.header, hb = b.header
        var mismatches: [String] = []
        if ha.chunkSizeBytes != hb.chunkSizeBytes {
            mismatches.append("chunk size differs (A: \(Format.bytes(UInt64(ha.chunkSizeBytes))), "
                              + "B: \(Format.bytes(UInt64(hb.chunkSizeBytes))))")
        }
        if ha.diskSizeBytes != hb.diskSizeBytes {
            mismatches.append("disk size differs (A: \(ha.diskSizeBytes) bytes, B: \(hb.diskSizeBytes) bytes)")
        }
        guard mismatches.isEmpty else {
            return .failure(ToolFailure(message: "cannot compare \(pathA) and \(pathB): \(mismatches.joined(separator: "; ")) — "
                                        + "chunk numbers only line up between files of the same disk size and chunk size",
                                        exitCode: ToolExit.problem))
        }
        let onlyA = a.hrl.combined(with: b.hrl) { $0 & ~$1 }
        let onlyB = b.hrl.combined(with: a.hrl) { $0 & ~$1 }
        let both = a.hrl.combined(with: b.hrl, &)
        func byteExtents(_ m: Bitmap) -> [ByteExtent] {
            ByteExtent.from(m.extents, chunkSizeBytes: ha.chunkSizeBytes, diskSizeBytes: ha.diskSizeBytes)
        }
        let sections = [("only_a", "only in A", onlyA), ("only_b", "only in B", onlyB), ("both", "in both", both)]
        let differentDisk = ha.diskIdentity != hb.diskIdentity

        if json {
            func section(_ map: Bitmap) -> DiffReport.Section {
                let extents = byteExtents(map)
                return .init(chunks: map.popcount, bytes: extents.totalBytes, extents: extents.map(ExtentPair.init))
            }
            return jsonResult(DiffReport(a: pathA, b: pathB, chunkSize: UInt64(ha.chunkSizeBytes), diskSize: ha.diskSizeBytes,
                                         sameDiskIdentity: !differentDisk, onlyA: section(onlyA), onlyB: section(onlyB),
                                         both: section(both)))
        }

        var out = "A: \(pathA) (\(a.hrl.popcount) dirty)\nB: \(pathB) (\(b.hrl.popcount) dirty)\n"
        out += "chunk size \(Format.bytes(UInt64(ha.chunkSizeBytes))), disk size \(ha.diskSizeBytes) bytes\n"
        if differentDisk {
            out += "note: the files name different disks (A: '\(ha.diskIdentity)', B: '\(hb.diskIdentity)')\n"
        }
        for (_, title, map) in sections {
            let extents = byteExtents(map)
            out += "\n\(title): \(map.popcount) chunk\(map.popcount == 1 ? "" : "s"), \(extents.totalBytes) bytes"
                + " (\(Format.bytes(extents.totalBytes)))\n"
            for e in extents { out += "  " + e.line + "\n" }
        }
        return CommandResult(output: out)
    }

    // MARK: verify

    /// Checks every header slot and bitmap page. Exit 0 when the file would open, 1 with every
    /// problem listed when it would not, 2 when there is no such file. `json`: the findings as
    /// one `VerifyReport` object, with the same exit status.
    public static func verify(path: String, json: Bool = false) -> CommandResult {
        do {
            try LoadedTrackingFile.checkPath(path)
        } catch {
            return .failure(error)
        }
        let report = TrackingFile.verifyReport(at: path)
        var out = ""
        if json && report.problems.isEmpty && report.header != nil {
            return jsonResult(VerifyReport(path: path, report: report, trackingFile: true))
        }
        if report.problems.isEmpty, let h = report.header {
            out = "\(path): OK (format v\(h.formatVersion), \(h.nrChunks) chunks of \(Format.bytes(UInt64(h.chunkSizeBytes))), "
                + "\(h.bitmapPages) bitmap page\(h.bitmapPages == 1 ? "" : "s"), state \(h.state))\n"
            for note in report.notes { out += "  note: \(note)\n" }
            return CommandResult(output: out)
        }
        let n = report.problems.count
        var notTrackingFile = false
        do {
            _ = try TrackingFile.open(at: path, readOnly: true)
        } catch let error as TrackingFileError {
            notTrackingFile = error.kind == .notATrackingFile
        } catch {}
        if json {
            return jsonResult(VerifyReport(path: path, report: report, trackingFile: !notTrackingFile), exitCode: ToolExit.problem)
        }
        if notTrackingFile {
            out = "\(path): not a Tidemark tracking (.hrl) file — .hrl files live in the agent's state_dir "
                + "(default /var/lib/tidemark), named <disk-id>.hrl\n"
        } else {
            out = "\(path): \(n) problem\(n == 1 ? "" : "s") — the agent will not trust this file and will resync the disk\n"
        }
        for problem in report.problems { out += "  \(problem)\n" }
        for note in report.notes { out += "  note: \(note)\n" }
        return CommandResult(output: out, exitCode: ToolExit.problem)
    }
}

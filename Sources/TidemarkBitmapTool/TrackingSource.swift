import Glibc
import TidemarkSystem
import TidemarkTracking

/// The live kernel bitmap of one tracked disk, as the tool uses it. A copy of
/// `LiveTrackingSnapshot` (whose initializer is internal to TidemarkSystem) so that tests
/// can build one.
public struct LiveMap: Sendable {
    public var words: [UInt64]
    /// The tracer could not record some write bit by bit: the whole disk counts as dirty.
    public var overflow: Bool
    public var chunkSizeBytes: UInt32
    public var nrChunks: UInt64
    public var devicePath: String

    public init(words: [UInt64], overflow: Bool, chunkSizeBytes: UInt32, nrChunks: UInt64, devicePath: String) {
        self.words = words
        self.overflow = overflow
        self.chunkSizeBytes = chunkSizeBytes
        self.nrChunks = nrChunks
        self.devicePath = devicePath
    }

    public init(_ snapshot: LiveTrackingSnapshot) {
        self.init(words: snapshot.words, overflow: snapshot.overflow, chunkSizeBytes: snapshot.chunkSizeBytes,
                  nrChunks: snapshot.nrChunks, devicePath: snapshot.devicePath)
    }
}

/// Where the tool gets live kernel state. The host's pinned tracer by default; tests
/// substitute a fixed map.
public struct ToolContext: Sendable {
    /// The live kernel bitmap of the disk whose `.hrl` is at the given path, or nil when that
    /// disk is not tracked on this host.
    public var liveMap: @Sendable (String) throws -> LiveMap?

    public init(liveMap: @escaping @Sendable (String) throws -> LiveMap?) {
        self.liveMap = liveMap
    }

    /// Reads the pinned tracer map of this host.
    public static let host = ToolContext(liveMap: { path in
        try LiveTracking.snapshot(forHRLPath: path).map(LiveMap.init)
    })
    /// Never consults a kernel map.
    public static let fileOnly = ToolContext(liveMap: { _ in nil })
}

/// Exit codes of `tidemark-bitmap`.
public enum ToolExit {
    public static let ok: Int32 = 0
    /// Verification found problems, or a file could not be used.
    public static let problem: Int32 = 1
    /// Bad usage, or a file that does not exist.
    public static let usage: Int32 = 2
}

/// A command that cannot go on: the message for stderr (one or two lines, naming the path and
/// what to do) and the exit code.
struct ToolFailure: Error {
    var message: String
    var exitCode: Int32
}

/// The state of the kernel map for one `.hrl`.
enum LiveState {
    /// `--hrl-only`: not consulted.
    case skipped
    /// The disk is not tracked on this host (or the tracer is not loaded).
    case notTracked
    /// Reading the map failed (usually: not root).
    case unavailable(String)
    /// A map exists but describes a different geometry; not combined.
    case mismatch(String, device: String)
    /// The map, as a bitmap of the same geometry as the file.
    case tracked(kernel: Bitmap, overflow: Bool, device: String)
}

/// One `.hrl` file read into memory, with the live kernel map when asked for.
struct LoadedTrackingFile {
    let path: String
    let header: HRLHeader
    /// The bits persisted in the file.
    let hrl: Bitmap
    let live: LiveState

    /// Chunks the agent must still ship: the file's bits, plus the kernel's undrained bits
    /// when live; the whole disk when the tracer overflowed.
    var effective: Bitmap {
        guard case .tracked(let kernel, let overflow, _) = live else { return hrl }
        if overflow { return .full(nrChunks: hrl.nrChunks) }
        return hrl.combined(with: kernel, |)
    }

    var isLive: Bool {
        if case .tracked = live { return true }
        return false
    }

    var overflow: Bool {
        if case .tracked(_, let overflow, _) = live { return overflow }
        return false
    }

    /// Chunks set in the kernel map but not (yet) in the file.
    var undrainedOnly: UInt64 {
        guard case .tracked(let kernel, _, _) = live else { return 0 }
        return kernel.combined(with: hrl) { k, h in k & ~h }.popcount
    }

    /// Dirty bytes of `bitmap`: dirty chunks times the chunk size, less the part of a dirty
    /// last chunk that lies past the end of the disk.
    func dirtyBytes(_ bitmap: Bitmap) -> UInt64 {
        let chunk = UInt64(header.chunkSizeBytes)
        var bytes = bitmap.popcount * chunk
        if header.nrChunks > 0, bitmap.isSet(header.nrChunks - 1) {
            bytes -= header.nrChunks * chunk - header.diskSizeBytes
        }
        return bytes
    }

    static func load(_ path: String, includeLive: Bool, context: ToolContext) throws(ToolFailure) -> LoadedTrackingFile {
        // The kernel map is read before the file. A drain persists bits in
        // the `.hrl` before it clears them in the kernel map, so a bit drained
        // between the two reads is in the file read second. Read the other
        // way round (file, then map), such a bit is in neither copy.
        try checkPath(path)
        var kernel: Result<LiveMap?, any Error> = .success(nil)
        if includeLive {
            do { kernel = .success(try context.liveMap(path)) } catch { kernel = .failure(error) }
        }
        let file = try openTrackingFile(path)
        let header = file.header
        let words: [UInt64]
        do {
            words = try file.readAllWords()
        } catch {
            throw describe(error, path: path)
        }
        let hrl = Bitmap(words: words, nrChunks: header.nrChunks)
        guard includeLive else { return LoadedTrackingFile(path: path, header: header, hrl: hrl, live: .skipped) }

        let live: LiveState
        do {
            if let snapshot = try kernel.get() {
                if snapshot.chunkSizeBytes != header.chunkSizeBytes || snapshot.nrChunks != header.nrChunks {
                    live = .mismatch("the kernel map has \(snapshot.nrChunks) chunks of \(Format.bytes(UInt64(snapshot.chunkSizeBytes))), "
                                     + "the file \(header.nrChunks) chunks of \(Format.bytes(UInt64(header.chunkSizeBytes)))",
                                     device: snapshot.devicePath)
                } else {
                    live = .tracked(kernel: Bitmap(words: snapshot.words, nrChunks: header.nrChunks),
                                    overflow: snapshot.overflow, device: snapshot.devicePath)
                }
            } else {
                live = .notTracked
            }
        } catch {
            live = .unavailable("\(error)")
        }
        return LoadedTrackingFile(path: path, header: header, hrl: hrl, live: live)
    }

    /// Checks the path the way an operator would want it checked before the format is
    /// looked at: missing, a directory, unreadable.
    static func checkPath(_ path: String) throws(ToolFailure) {
        let st: stat
        do {
            st = try fileStatus(path)
        } catch let e as SystemError where e.errno == ENOENT || e.errno == ENOTDIR {
            throw ToolFailure(message: "\(path): no such file — .hrl files live in the agent's state_dir "
                              + "(default /var/lib/tidemark), one per disk, named <disk-id>.hrl",
                              exitCode: ToolExit.usage)
        } catch let e as SystemError {
            throw ToolFailure(message: "\(path): cannot be examined: \(String(cString: strerror(e.errno)))", exitCode: ToolExit.problem)
        } catch {
            throw ToolFailure(message: "\(path): cannot be examined: \(error)", exitCode: ToolExit.problem)
        }
        if st.st_mode & S_IFMT == S_IFDIR {
            throw ToolFailure(message: "\(path): is a directory — give one .hrl file, e.g. \(path.hasSuffix("/") ? path : path + "/")<disk-id>.hrl",
                              exitCode: ToolExit.usage)
        }
        if access(path, R_OK) != 0 {
            throw ToolFailure(message: "\(path): permission denied — .hrl files are readable by root only; run as root",
                              exitCode: ToolExit.problem)
        }
    }

    static func openTrackingFile(_ path: String) throws(ToolFailure) -> TrackingFile {
        try checkPath(path)
        do {
            return try TrackingFile.open(at: path, readOnly: true)
        } catch {
            throw describe(error, path: path)
        }
    }

    /// Turns a library error into one operator-facing message.
    static func describe(_ error: any Error, path: String) -> ToolFailure {
        if let error = error as? TrackingFileError {
            switch error.kind {
            case .notATrackingFile:
                return ToolFailure(message: "\(path): not a Tidemark tracking (.hrl) file (\(error.detail)) — "
                                   + "give the path of a <disk-id>.hrl file from the agent's state_dir (default /var/lib/tidemark)",
                                   exitCode: ToolExit.problem)
            case .corrupt:
                return ToolFailure(message: "\(path): corrupt: \(error.detail) — run 'tidemark-bitmap verify \(path)' to list "
                                   + "every problem; the agent will not trust this file and will resync the disk",
                                   exitCode: ToolExit.problem)
            case .unsupportedVersion:
                return ToolFailure(message: "\(path): unsupported format version (\(error.detail)) — "
                                   + "use the tidemark-bitmap of the agent release that wrote it",
                                   exitCode: ToolExit.problem)
            case .wrongIdentity:
                return ToolFailure(message: "\(path): \(error.detail)", exitCode: ToolExit.problem)
            }
        }
        if let error = error as? SystemError {
            return ToolFailure(message: "\(path): \(error)", exitCode: ToolExit.problem)
        }
        return ToolFailure(message: "\(path): \(error)", exitCode: ToolExit.problem)
    }
}

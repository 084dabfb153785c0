import Glibc
import TidemarkConfigFiles
import TidemarkSystem
import TidemarkTarget

/// Where tidemarkctl finds target storage: `--target DIR`, else `target.path`
/// of the server configuration (`--config FILE`, or /etc/tidemark/server.yaml
/// when it exists, with TIDEMARK_* overrides), else /var/lib/tidemark/target.
public enum TargetLocation {
    public static func resolve(target: String?, configPath: String?) throws -> String {
        if let target { return target }
        let config = try configPath.map { try ServerConfig.load(path: $0) } ?? ServerConfig.loadDefault()
        return config.targetPath
    }

    /// Opens an existing target for reading, never creating one: a typo in
    /// `--target` must not leave a new empty target behind. Returns nil for
    /// an existing empty directory (a target nothing was written to yet).
    static func openExisting(_ dir: String) throws -> TargetRepository? {
        guard let st = try fileStatusIfPresent(dir, purpose: "opening the target storage") else {
            throw TidemarkError(.notFound, "no target storage at \(dir): the directory does not exist",
                                hint: "pass --target DIR, or set target.path in \(ServerConfig.defaultPath) (or --config FILE)")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw TidemarkError(.invalidArgument, "target storage \(dir) is not a directory",
                                hint: "pass --target with the directory the process server writes to")
        }
        if access(dir + "/TIDEMARK-TARGET", F_OK) != 0 {
            if try isEmptyDirectory(dir) { return nil }
            throw TidemarkError(.invalidArgument, "\(dir) is not Tidemark target storage (it has no TIDEMARK-TARGET marker)",
                                hint: "pass --target with the directory the process server writes to (target.path in server.yaml)")
        }
        return try TargetRepository(localDirectory: dir)
    }

    private static func isEmptyDirectory(_ dir: String) throws -> Bool {
        guard let d = opendir(dir) else {
            throw SystemError(call: "opendir", errno: errno, context: "listing the target storage \(dir)")
        }
        defer { closedir(d) }
        while let ent = readdir(d) {
            let name = withUnsafeBytes(of: ent.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { return false }
        }
        return true
    }
}

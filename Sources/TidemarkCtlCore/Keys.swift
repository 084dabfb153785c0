import TidemarkSurface
import TidemarkSystem
import TidemarkWire

/// Key material. TLS certificates (CA, server, one per agent) are made by
/// scripts/make-certs.sh (docs/keys-and-certificates.md); tidemarkctl only
/// creates the replication key.
public enum KeysCommand {
    /// `tidemarkctl keys generate-replication-key --out FILE`: a new random
    /// 256-bit key, mode 0600; an existing file is never overwritten.
    /// `json` prints one `GeneratedKeyReport` line instead.
    public static func generateReplicationKey(out: String, json: Bool = false) throws -> String {
        let key = try ReplicationKey.generate(path: out)
        if json { return try JSONOutput.line(GeneratedKeyReport(keyID: key.idHex, path: out)) }
        return """
            generated replication key \(key.idHex) in \(out) (mode 0600)
            keep a copy offline: every replicated disk is sealed with it, and without it no point can be recovered

            """
    }
}

import Glibc

/// An operating-system error: the failing call's name, its errno, and what it
/// was doing, with the Swift source location. Modeled on swift-nio's
/// `IOError`: errors are structs so cases can be added without breaking users.
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The C call that failed ("open", "ioctl(BLKGETSIZE64)", "bpf_map_create").
    public var call: String
    /// The errno value.
    public var errno: Int32
    /// What the call was for, in words an operator understands, with the path.
    public var context: String
    public var file: String
    public var line: Int

    public init(call: String, errno: Int32, context: String, file: String = #fileID, line: Int = #line) {
        self.call = call
        self.errno = errno
        self.context = context
        self.file = file
        self.line = line
    }

    public var description: String {
        "\(context): \(call) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

extension SystemError {
    /// True for a read, write or connect that ran out of time (the sockets'
    /// timeouts in TidemarkTransport, a poll deadline): the peer may still
    /// be there, nothing was lost.
    public var isTimeout: Bool { errno == ETIMEDOUT }
}

/// A failure that is not an errno: bad input, a format violation, a state
/// that forbids the operation. `message` says what is wrong and `hint` what
/// to do about it.
public struct TidemarkError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case invalidArgument
        case notFound
        case unsupported
        case busy
        case corrupt
        case state
        case io
    }
    public var kind: Kind
    public var message: String
    public var hint: String?
    public var file: String
    public var line: Int

    public init(_ kind: Kind, _ message: String, hint: String? = nil, file: String = #fileID, line: Int = #line) {
        self.kind = kind
        self.message = message
        self.hint = hint
        self.file = file
        self.line = line
    }

    public var description: String {
        if let hint { return "\(message)\n  hint: \(hint)" }
        return message
    }
}

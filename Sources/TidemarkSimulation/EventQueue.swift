/// The simulated clock's future: events by time, ties in the order they
/// were scheduled (so a run does not depend on the heap's layout). A
/// binary heap: O(log n) per event; it holds a bounded number of events
/// (each component keeps at most a few timers, the network one per
/// message in flight).
struct EventQueue {
    struct Entry {
        var at: UInt64
        var order: UInt64
        var event: SimEvent
    }

    private var heap: [Entry] = []
    private var nextOrder: UInt64 = 0

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }

    mutating func push(at: UInt64, _ event: SimEvent) {
        heap.append(Entry(at: at, order: nextOrder, event: event))
        nextOrder += 1
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard Self.before(heap[i], heap[parent]) else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Entry? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < heap.count && Self.before(heap[l], heap[m]) { m = l }
            if r < heap.count && Self.before(heap[r], heap[m]) { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
        return top
    }

    private static func before(_ a: Entry, _ b: Entry) -> Bool {
        a.at != b.at ? a.at < b.at : a.order < b.order
    }
}

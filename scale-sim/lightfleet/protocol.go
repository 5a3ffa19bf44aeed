package lightfleet

// WorkerEnv, set in a process's environment, makes RunWorkerIfAsked run
// that process as a fleet worker.
const WorkerEnv = "SPOKE_SCALE_SIM_FLEET_WORKER"

// Item is a resource name with a version (in an applied event) or the hash
// of the content held (in a state answer), hex-encoded as versions are.
type Item struct {
	Name, Version string
}

// op is what the parent asks of a worker.
type op uint8

const (
	opSetup op = iota + 1 // the first command: Setup is set
	opStart               // start node Node
	opStop                // stop node Node
	opState               // answer with node Node's held hashes
	opRx                  // answer with the bytes read by the worker's nodes
)

// command is one message from the parent to a worker.
type command struct {
	Op    op
	Node  int    // index in the whole fleet
	ID    uint64 // answered in the event's ID (opState, opRx)
	Setup *setup
}

// setup is what a worker needs to run its nodes.
type setup struct {
	Address string
	// CAPEM is the certificates the control plane's serving certificate
	// must chain to; plaintext when empty.
	CAPEM []byte
	// Nodes are the worker's nodes by their index in the whole fleet.
	Nodes map[int]nodeSpec
	// MaxConnecting is how many of the worker's nodes may wait at once
	// for the first response of a stream (connecting, TLS, first view).
	MaxConnecting int
}

type nodeSpec struct {
	Name  string
	Token string // sent as a bearer token when set (over TLS only)
}

// kind is what a worker tells the parent.
type kind uint8

const (
	evApplied kind = iota + 1 // node Node applied a response at At
	evAnswer                  // the answer to command ID
)

// event is one message from a worker to the parent.
type event struct {
	Kind    kind
	Node    int
	At      int64 // unix nanoseconds, on the machine's clock
	Applied []Item
	Removed []string
	ID      uint64
	Rx      uint64
	Held    []Item
	// Acks and Nacks are the node's counts since it started (opState).
	Acks, Nacks uint64
	LastNack    string
	Err         string
}

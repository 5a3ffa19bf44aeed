package spokev1

// Limits shared by the control plane, which sends views, and the agent,
// which receives them.
const (
	// MaxMessageBytes is the largest StreamViewsResponse an agent accepts:
	// its gRPC receive limit.
	MaxMessageBytes = 64 << 20
	// DefaultResponseBytes is the size above which the control plane splits
	// a delta into several responses, unless configured otherwise.
	DefaultResponseBytes = 4 << 20
	// ResponseOverheadBytes is room kept in every response for what is not
	// a resource: the nonce and the framing.
	ResponseOverheadBytes = 1 << 10
	// MaxViewBytes is the largest framed resource the control plane sends:
	// one at this size travels alone in a response with only its nonce, so
	// it fits MaxMessageBytes. A larger view is rejected, never sent, since
	// an agent could not decode the response to refuse it.
	MaxViewBytes = MaxMessageBytes - ResponseOverheadBytes
)

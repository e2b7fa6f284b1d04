package datapath

// WithoutReceiverGuard returns opts with the receiver guard removed: every
// direction is redirected from its first byte, whatever its receiver does.
// The hazard tests use it to show that they fail without the guard.
func WithoutReceiverGuard(opts Options) Options {
	opts.noGuard = true
	return opts
}

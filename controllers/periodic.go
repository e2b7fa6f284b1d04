package controllers

import (
	"context"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/log"
)

// every runs fn each period (def when period is not positive) until ctx ends, logging
// what fails as what: the loop of the agent's periodic reporters.
func every(ctx context.Context, period, def time.Duration, what string, fn func(context.Context) error) error {
	t := time.NewTicker(orDefault(period, def))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := fn(ctx); err != nil {
				log.FromContext(ctx).Error(err, what)
			}
		}
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

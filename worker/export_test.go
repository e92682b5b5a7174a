package worker

// WithBeforeStoreDone returns cfg with a hook that runs after a job's final done marker
// is published and before its result and done state are written; it may block to hold
// that window open.
func WithBeforeStoreDone(cfg Config, fn func(jobID string)) Config {
	cfg.beforeStoreDone = fn
	return cfg
}

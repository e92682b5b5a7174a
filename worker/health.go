package worker

import (
	"errors"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// TargetStall reports a stalled target for /healthz: the last job attempt that ended was
// aborted because the target fell silent, e.g. "stalled: no response for 5m0s on job <id>".
// It is nil again once a later attempt gets a complete answer (or an HTTP error) from the
// target. The inventory's polls cannot tell: Ollama's /api/tags and /api/ps answer while
// one of its runners hangs.
func (w *Worker) TargetStall() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stall == "" {
		return nil
	}
	return errors.New(w.stall)
}

func (w *Worker) targetStalled(jobID string, se *ollama.StallError) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stall = "stalled: " + se.Reason() + " on job " + jobID
}

func (w *Worker) targetAnswered() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stall != "" {
		w.log.Info("target answers again", "after", w.stall)
	}
	w.stall = ""
}

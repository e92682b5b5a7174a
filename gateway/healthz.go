package gateway

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

type healthTarget struct {
	URL       string     `json:"url,omitempty"`
	Reachable bool       `json:"reachable"`
	Error     string     `json:"error,omitempty"`
	LastPoll  *time.Time `json:"last_poll,omitempty"`
}

type health struct {
	Status   string       `json:"status"`
	Degraded bool         `json:"degraded"`
	Target   healthTarget `json:"target"`
	NATS     string       `json:"nats"`
	// Targets are this foreman's target and those of the other live foremen (ADR-0029).
	Targets []targetView `json:"targets"`
	// TargetNameConflict says that another foreman publishes its target under this one's
	// name (ADR-0056): the Macs' shared inventory is split until one is renamed.
	TargetNameConflict string `json:"target_name_conflict,omitempty"`
}

// healthTargetsWait bounds /healthz's read of the other foremen's targets.
const healthTargetsWait = time.Second

// handleHealthz answers 200 while the process is alive; "degraded" tells whether the
// target (its inventory poll fails, or the worker saw it stall) or NATS is in trouble.
func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	snap := s.inv.Snapshot()
	// /healthz is unauthenticated: a password in the target's URL must not show.
	h := health{Status: "ok", NATS: "ok", Target: healthTarget{URL: ollama.RedactURL(s.cfg.TargetURL), Reachable: snap.Polled && !snap.Degraded}}
	if !snap.LastPoll.IsZero() {
		t := snap.LastPoll.UTC()
		h.Target.LastPoll = &t
	}
	if snap.Err != nil {
		h.Target.Error = snap.Err.Error()
	}
	if snap.Degraded {
		h.Degraded = true
	}
	if !snap.Polled && snap.Err == nil {
		// Start-up, or a first poll of a target that hangs (up to its 10 s bound): not
		// known to be reachable, so not ok.
		h.Target.Error, h.Degraded = "no poll of ollama has ended yet", true
	}
	if s.cfg.TargetHealth != nil {
		if err := s.cfg.TargetHealth(); err != nil {
			h.Target.Error = strings.TrimPrefix(h.Target.Error+"; "+err.Error(), "; ")
			h.Degraded = true
		}
	}
	if s.cfg.NATSHealth != nil {
		if err := s.cfg.NATSHealth(); err != nil {
			h.NATS, h.Degraded = err.Error(), true
		}
	}
	if c, ok := s.store.TargetNameConflict(s.cfg.TargetName); ok {
		h.TargetNameConflict = nameConflict(s.cfg.TargetName, c)
		h.Degraded = true
	}
	if h.Degraded {
		h.Status = "degraded"
	}
	// The other foremen's targets are read from NATS: one that holds the read (frozen,
	// or being reconnected to) must not hold /healthz past a probe's timeout (a second,
	// Kubernetes' default), and says so.
	tctx, cancel := context.WithTimeout(r.Context(), healthTargetsWait)
	defer cancel()
	var err error
	h.Targets, err = s.targetViews(tctx)
	if err != nil {
		if h.NATS == "ok" {
			h.NATS = "the other foremen's targets could not be read: " + err.Error()
		}
		h.Degraded, h.Status = true, "degraded"
	}
	for i := range h.Targets {
		h.Targets[i].Models = nil // /healthz is unauthenticated: loaded models and reachability only
	}
	writeJSON(w, http.StatusOK, h)
}

// nameConflict is /healthz's word on another foreman publishing under the own target
// name.
func nameConflict(own string, c broker.TargetNameConflict) string {
	as := ""
	if c.Name != own {
		as = fmt.Sprintf(" (as %q, the same key)", c.Name)
	}
	return fmt.Sprintf("another foreman (boot id %s, Ollama at %s) publishes its target under FOREMAN_TARGET_NAME %q too%s, "+
		"last seen %s: the other foremen see one of the two at a time; give each foreman its own FOREMAN_TARGET_NAME",
		c.BootID, c.URL, own, as, c.Seen.UTC().Format(time.RFC3339))
}

package gateway

import (
	"context"
	"errors"
	"net/http"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// handleDeliveries shows a job's webhook delivery log: every attempt with its event
// state, webhook-id, status or error and time.
func (s *Server) handleDeliveries(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, _, err := s.store.Get(r.Context(), id); err != nil {
		s.writeError(w, r, err)
		return
	}
	log, err := s.store.Deliveries(r.Context(), id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if log == nil {
		log = []broker.DeliveryAttempt{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"deliveries": log})
}

// handleRedeliver asks the webhook dispatcher to send the job's latest state event its
// webhook_events want again (202; 409 when there is none); the outcome shows up in the
// delivery log.
func (s *Server) handleRedeliver(w http.ResponseWriter, r *http.Request) {
	j, _, err := s.store.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if j.Sync || j.Webhook == nil {
		s.writeError(w, r, refuse(ErrConflict, "job has no webhook"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	reply, err := s.store.Redeliver(ctx, j.ID)
	if errors.Is(err, broker.ErrNoDispatcher) || errors.Is(err, context.DeadlineExceeded) {
		s.writeError(w, r, refuse(ErrUnavailable, "the webhook dispatcher is not running"))
		return
	}
	if err != nil && !errors.Is(err, broker.ErrBadReply) {
		s.writeError(w, r, err)
		return
	}
	if err != nil || reply.Error != "" {
		s.writeError(w, r, refuse(ErrConflict, "redeliver: "+reply.Error))
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"job_id": j.ID, "webhook_id": reply.WebhookID, "state": reply.State})
}

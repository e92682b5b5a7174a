package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// topQueue is GET /queue's answer.
type topQueue struct {
	Running *client.Job    `json:"running"`
	Loaded  []string       `json:"loaded"`
	Queued  []topQueuedJob `json:"queued"`
	Total   int            `json:"total"`
}

// getQueue reads GET /queue?limit=, with errors shaped as the client's (APIError,
// ConnectionError) so clientFlags.explain words them.
func getQueue(ctx context.Context, base, token string, limit int) (*topQueue, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/queue?limit=%d", base, limit), nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &client.ConnectionError{URL: base, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, &client.ConnectionError{URL: base, Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, &client.APIError{Status: resp.StatusCode, Message: msg}
	}
	var q topQueue
	if err := json.Unmarshal(data, &q); err != nil {
		return nil, fmt.Errorf("GET /queue: %w", err)
	}
	return &q, nil
}

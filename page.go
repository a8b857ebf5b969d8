package main

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Lists are paged by keyset: a cursor holds the sort key of the last row a
// client saw, so a page costs one index range scan however deep it is, and
// rows inserted meanwhile never shift or repeat what follows.
const (
	defaultLimit = 20
	maxLimit     = 100
)

// cursor is the position after which the next page starts. Kind ties a
// cursor to the list that issued it: 'c' customers and 'n' numbers, ordered
// by id; 'o' orders, ordered newest first, so their cursors also hold Time.
type cursor struct {
	Kind byte      `json:"k"`
	Time time.Time `json:"t,omitzero"`
	ID   int64     `json:"i"`
}

// encode makes the cursor opaque: clients must treat it as a token. It
// cannot fail: a stored row's time is within RFC 3339's years.
func (c cursor) encode() string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeCursor parses a cursor issued for a list of the given kind. It
// accepts every cursor encode can write for a stored row, and nothing that
// would make PostgreSQL fail: times from year 1 to 9999, positive ids.
func decodeCursor(s string, kind byte) (cursor, bool) {
	var c cursor
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || json.Unmarshal(raw, &c) != nil {
		return cursor{}, false
	}
	c.Time = c.Time.UTC()
	year := c.Time.Year()
	return c, c.Kind == kind && c.ID > 0 && year >= 1 && year <= 9999 && (kind == 'o' || c.Time.IsZero())
}

// pageRequest is a list's limit and the cursor to start after, whose ID is 0
// for the first page.
type pageRequest struct {
	limit int
	after cursor
}

// parsePage reads limit and after from q; c collects what is wrong with them,
// and the page is to be used only when c holds nothing.
func parsePage(q url.Values, kind byte, c *checker) pageRequest {
	p := pageRequest{limit: defaultLimit}
	if q.Has("limit") {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil || n < 1 || n > maxLimit {
			c.addError(fieldError{Parameter: "limit", Detail: "limit must be an integer from 1 to 100"})
		}
		p.limit = n
	}
	if q.Has("after") {
		cur, ok := decodeCursor(q.Get("after"), kind)
		if !ok {
			c.addError(fieldError{Parameter: "after", Detail: "after must be a next_cursor value returned by this list"})
		}
		p.after = cur
	}
	return p
}

// listPage is the body of every list response.
type listPage[T any] struct {
	Data       []T     `json:"data"`
	NextCursor *string `json:"next_cursor"`
}

// respondPage answers a list, or with err as a problem when it is not nil.
// rows holds up to limit+1 items: the extra one only proves that a next page
// exists. next makes the cursor for the last row kept.
func respondPage[T any](w http.ResponseWriter, r *http.Request, rows []T, err error, limit int, next func(T) cursor) {
	if err != nil {
		fail(w, r, err)
		return
	}
	page := listPage[T]{Data: append([]T{}, rows[:min(len(rows), limit)]...)} // an empty list is [], never null
	if len(rows) > limit {
		token := next(rows[limit-1]).encode()
		page.NextCursor = &token
		q := r.URL.Query()
		q.Set("after", token)
		q.Set("limit", strconv.Itoa(limit))
		w.Header().Set("Link", "<"+r.URL.Path+"?"+q.Encode()+`>; rel="next"`)
	}
	writeJSON(w, r, http.StatusOK, page)
}

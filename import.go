package main

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Imports are bounded so that several at once fit the memory the service is
// deployed with: a body of at most maxImportBody bytes holding at most
// maxImportRows rows, and at most maxImports imports at a time.
const (
	maxImportRows = 10_000
	maxImports    = 2
)

// importBatch is an import's rows, read from a JSON array or a CSV file,
// before validation.
type importBatch[T any] struct {
	items []T
	csv   bool
}

// importResult answers a successful import.
type importResult struct {
	Imported int     `json:"imported"`
	IDs      []int64 `json:"ids"`
}

// serveImport answers an import: it takes one of slots, reads the rows (a
// JSON array of objects decoded like a single create, or CSV whose header row
// names the same fields: columns lists them, fromCSV builds a row from a
// record keyed by column), and has write check and store them, all or
// nothing, telling the checker it gets of every problem.
func serveImport[T any](w http.ResponseWriter, r *http.Request, slots chan struct{}, columns []string,
	fromCSV func(map[string]string) T, write func(importBatch[T], *checker) ([]int64, error)) {
	select {
	case slots <- struct{}{}:
		defer func() { <-slots }()
	default:
		fail(w, r, &requestError{status: http.StatusServiceUnavailable, detail: "too many imports are in progress; retry shortly"})
		return
	}
	batch, err := readImport(w, r, columns, fromCSV)
	if err == nil && len(batch.items) == 0 {
		err = invalid(fieldError{Pointer: "#", Detail: "must hold at least one row"})
	}
	var ids []int64
	if err == nil {
		ids, err = write(batch, newChecker())
	}
	respond(w, r, http.StatusCreated, importResult{Imported: len(ids), IDs: ids}, err)
}

// readImport reads an import body of at most maxImportBody bytes and
// maxImportRows rows, JSON elements one at a time.
func readImport[T any](w http.ResponseWriter, r *http.Request, columns []string, fromCSV func(map[string]string) T) (importBatch[T], error) {
	body := http.MaxBytesReader(w, r.Body, maxImportBody)
	switch mediaType(r) {
	case "application/json":
		return readJSONArray[T](body)
	case "text/csv":
		return readCSV(body, columns, fromCSV)
	}
	return importBatch[T]{}, &requestError{status: http.StatusUnsupportedMediaType, detail: "Content-Type must be application/json or text/csv"}
}

var errTooManyRows = &requestError{status: http.StatusRequestEntityTooLarge,
	detail: "an import must not hold more than " + strconv.Itoa(maxImportRows) + " rows"}

func readJSONArray[T any](body io.Reader) (importBatch[T], error) {
	var b importBatch[T]
	dec := json.NewDecoder(body)
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		if err != nil {
			return b, jsonError(err)
		}
		return b, malformed("the body must be a JSON array of objects", fieldError{Pointer: "#", Detail: "must be a JSON array"})
	}
	for i := 0; dec.More(); i++ {
		if i == maxImportRows {
			return b, errTooManyRows
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return b, jsonError(err)
		}
		var item T
		if err := decodeStrict(raw, &item); err != nil {
			// decodeStrict fails only with a *requestError: point it at element i.
			e := err.(*requestError)
			e.detail = "element " + strconv.Itoa(i) + ": " + e.detail
			for f := range e.fields {
				e.fields[f].Pointer = "#/" + strconv.Itoa(i) + strings.TrimPrefix(e.fields[f].Pointer, "#")
			}
			return b, e
		}
		b.items = append(b.items, item)
	}
	if _, err := dec.Token(); err != nil {
		return b, jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return b, malformed("the body must hold a single JSON value")
	}
	return b, nil
}

func readCSV[T any](body io.Reader, columns []string, fromCSV func(map[string]string) T) (importBatch[T], error) {
	b := importBatch[T]{csv: true}
	cr := csv.NewReader(&shortLines{r: body})
	cr.FieldsPerRecord = 0 // every row as wide as the header
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return b, malformed("the CSV must start with a header row: " + strings.Join(columns, ","))
	}
	if err != nil {
		return b, csvError(err)
	}
	for i, name := range header {
		header[i] = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(name, "\ufeff")))
		if !slices.Contains(columns, header[i]) {
			return b, malformed("unknown CSV column " + strconv.Quote(name) + "; columns are " + strings.Join(columns, ","))
		}
		if slices.Contains(header[:i], header[i]) {
			return b, malformed("CSV column " + strconv.Quote(name) + " appears twice")
		}
	}
	cr.ReuseRecord = true // only now: the header must stay; each row is copied into a map
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return b, csvError(err)
		}
		if len(b.items) == maxImportRows {
			return b, errTooManyRows
		}
		fields := make(map[string]string, len(header))
		for i, name := range header {
			fields[name] = strings.TrimSpace(rec[i])
		}
		b.items = append(b.items, fromCSV(fields))
	}
}

// maxCSVLine bounds a line of a CSV import. No row of a valid import comes
// near it, and encoding/csv holds all of a record in memory, so an unending
// quoted field would otherwise take the whole body's size several times over.
const maxCSVLine = 64 << 10

// shortLines reads r, failing once a line runs past maxCSVLine bytes.
type shortLines struct {
	r   io.Reader
	run int // bytes since the last newline
}

func (s *shortLines) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	for line := range bytes.Lines(p[:n]) {
		text, ended := bytes.CutSuffix(line, []byte("\n"))
		if s.run += len(text); s.run > maxCSVLine {
			return 0, fmt.Errorf("a line is longer than %d KiB", maxCSVLine>>10)
		}
		if ended {
			s.run = 0
		}
	}
	return n, err
}

// cell returns a CSV record's cell, or nil for an empty one: an empty cell
// is an absent field.
func cell(rec map[string]string, name string) *string {
	if v := rec[name]; v != "" {
		return &v
	}
	return nil
}

// csvError reports a CSV syntax error with its line, or a body too large.
func csvError(err error) error {
	if _, tooBig := errors.AsType[*http.MaxBytesError](err); tooBig {
		return jsonError(err)
	}
	if pe, ok := errors.AsType[*csv.ParseError](err); ok {
		return malformed("malformed CSV on line " + strconv.Itoa(pe.Line) + ": " + pe.Err.Error())
	}
	return malformed("malformed CSV: " + err.Error())
}

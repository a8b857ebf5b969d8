package main

import (
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestContract runs a script through the HTTP stack and PostgreSQL and checks
// every answer against openapi.yaml.
func TestContract(t *testing.T) {
	c := contract{doc: readYAML(t, string(openapiYAML))}
	ta := newTestApp(t, map[string]string{"AT_CALLBACK_SECRET": "k7Qm2xVb9LpT4wZr"})
	send := func(method, target string, body any, headers map[string]string, status int) response {
		t.Helper()
		r := ta.request(method, target, body, "application/json", headers).must(t, status)
		c.check(t, method, target, r)
		return r
	}
	token := map[string]string{"Authorization": "Bearer " + ta.token}
	csv := map[string]string{"Authorization": token["Authorization"], "Content-Type": "text/csv"}
	keyed := map[string]string{"Authorization": token["Authorization"], "Idempotency-Key": "order-1"}
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	send("GET", "/healthz", nil, nil, 200)
	send("GET", "/readyz", nil, nil, 200)
	send("GET", "/openapi.yaml", nil, nil, 200)
	amina := send("POST", "/v1/customers", map[string]any{"code": "CUST-0007", "name": "Amina Njoroge", "phone": "+254712345678"}, token, 201).header.Get("Location")
	send("POST", "/v1/customers", map[string]any{"code": "CUST-0007", "name": "Amina", "phone": "+254712345678"}, token, 409)
	send("POST", "/v1/customers", map[string]any{"code": "no spaces", "name": " ", "phone": "0712"}, token, 422)
	send("POST", "/v1/customers", `{"code":"CUST-1","Name":"Amina"}`, token, 400)
	send("POST", "/v1/customers", `{"name":"`+strings.Repeat("x", maxBody)+`"}`, token, 413)
	send("POST", "/v1/customers", `{}`, map[string]string{"Authorization": token["Authorization"], "Content-Type": "text/plain"}, 415)
	send("GET", "/v1/customers", nil, nil, 401)
	send("GET", "/v1/customers", nil, map[string]string{"Authorization": "Bearer not.a.token"}, 401)
	send("POST", "/v1/orders", `{}`, map[string]string{"Authorization": "Bearer " + ta.issuer.token(t, "staff-2", "orders:read")}, 403)
	send("PUT", "/v1/customers/import", nil, token, 405)
	send("GET", "/v1/customers/99999", nil, token, 404)
	send("PATCH", amina, map[string]any{"email": "amina@example.com"}, token, 200)
	placed := send("POST", "/v1/orders", `{"customer_code":"CUST-0007","item":"whole-exome-sequencing","amount":"1250.00"}`, keyed, 201).header.Get("Location")
	send("POST", "/v1/orders", `{"customer_code":"CUST-0007","item":"whole-exome-sequencing","amount":1250}`, keyed, 201)
	send("POST", "/v1/orders", map[string]any{"customer_code": "CUST-0007", "item": "kit", "amount": 1300}, keyed, 422)
	send("POST", "/v1/orders", map[string]any{"customer_code": "CUST-0007", "item": "kit", "amount": 480.5, "channel": "none"}, token, 201)
	send("GET", placed, nil, token, 200)
	send("POST", "/hooks/africastalking/k7Qm2xVb9LpT4wZr", "id=ATXid_1&status=Success&phoneNumber=%2B254712345678&networkCode=63902", form, 200)
	send("POST", "/hooks/africastalking/k7Qm2xVb9LpT4wZr", "id=ATXid_1&status=Delivered", form, 400)
	send("POST", "/hooks/africastalking/wrong-secret-0000", "id=ATXid_1&status=Success", form, 404)
	njeri := send("POST", "/v1/customers", map[string]any{"code": "CUST-0057", "name": "Njeri Wambui", "phone": "+254700111222"}, token, 201).header.Get("Location")
	send("POST", "/v1/orders/import?notify=false", "customer_code,item,amount\n"+strings.Repeat("CUST-0057,kit,10.00\n", 57), csv, 201)
	var many customer
	send("GET", njeri, nil, token, 200).json(t, &many)
	if many.MoreOrders == nil {
		t.Fatalf("a customer with 57 orders: more_orders is null, want a link to those past the %d it embeds", embeddedOrders)
	}
	send("GET", *many.MoreOrders, nil, token, 200) // a list of orders
	send("GET", "/v1/customers?limit=1", nil, token, 200)
	send("POST", "/v1/customers/import", []map[string]any{{"code": "CUST-0009", "name": "Wanjiru Mwangi", "phone": "+254711222333"}}, token, 201)
	send("POST", "/v1/customers/import", "code,name,phone,email\nCUST-0010,Baraka Otieno,+254722333444,\n", csv, 201)
	send("POST", "/v1/customers/import", "code,name,phone\nCUST-0011,,0722\n", csv, 422)
	send("POST", "/v1/customers/import", []map[string]any{{"code": "CUST-0012", "name": "Achieng", "phone": "0722"}}, token, 422)
	ta.server.imports <- struct{}{} // both import slots taken
	ta.server.imports <- struct{}{}
	send("POST", "/v1/orders/import", "[]", token, 503)
	gone := send("POST", "/v1/customers", map[string]any{"code": "CUST-0013", "name": "Kipchoge Ruto", "phone": "+254744555666"}, token, 201).header.Get("Location")
	send("DELETE", gone, nil, token, 204)
	number := send("POST", "/v1/numbers", map[string]any{"value": "+55 84 91234-4321", "monthyPrice": "0.03", "setupPrice": "3.40", "currency": "U$"}, token, 201).header.Get("Location")
	send("GET", "/v1/numbers?limit=1", nil, token, 200)
	send("GET", number, nil, token, 200)
	send("PUT", number, map[string]any{"value": "+5584912344321", "monthlyPrice": 0.05, "setupPrice": 3.4, "currency": "U$"}, token, 200)
	send("PATCH", number, map[string]any{"setupPrice": "2.90"}, token, 200)
	send("DELETE", number, nil, token, 204)
	ta.store.db.Close()
	send("GET", "/v1/orders", nil, token, 500)
	send("GET", "/readyz", nil, nil, 503)
}

// contract is openapi.yaml as readYAML reads it.
type contract struct{ doc map[string]any }

// get follows v's $ref, then each name in turn, to a mapping (nil if none).
func (c contract) get(v any, names ...string) map[string]any {
	m, _ := v.(map[string]any)
	if ref, ok := m["$ref"].(string); ok {
		m = c.get(c.doc, strings.Split(ref, "/")[1:]...)
	}
	if len(names) == 0 {
		return m
	}
	return c.get(m[names[0]], names[1:]...)
}

// check fails the test unless r has a status, required headers and a body the
// document gives for the operation that answered: that of the most specific
// path, as the ServeMux picks it, or for a method the path lacks (405) each.
func (c contract) check(t *testing.T, method, target string, r response) {
	t.Helper()
	method = strings.ToLower(method)
	best, score := "", -9 // 10 with the method, 0 without, less 1 for each parameter
	for tmpl, item := range c.get(c.doc, "paths") {
		s := -strings.Count(tmpl, "{")
		if c.get(item, method) != nil {
			s += 10
		}
		if ok, _ := path.Match(regexp.MustCompile(`\{\w+\}`).ReplaceAllString(tmpl, "*"), strings.Split(target, "?")[0]); ok && s > score {
			best, score = tmpl, s
		}
	}
	where := fmt.Sprintf("%s %s answered %d", strings.ToUpper(method), target, r.status)
	if best == "" {
		t.Errorf("%s, and no path of the document matches", where)
	}
	for m, op := range c.get(c.doc, "paths", best) {
		if m == "parameters" || score > 0 && m != method {
			continue
		}
		res := c.get(op, "responses", strconv.Itoa(r.status))
		for name, h := range c.get(res, "headers") {
			if c.get(h)["required"] == true && r.header.Get(name) == "" {
				t.Errorf("%s without the header %s", where, name)
			}
		}
		mt, _, _ := strings.Cut(r.header.Get("Content-Type"), ";")
		media, typed := c.get(res, "content")[mt]
		var body any // stays nil, which no response schema allows, if r.body is not JSON
		json.Unmarshal(r.body, &body)
		switch {
		case res == nil:
			t.Errorf("%s, which the document does not list for %s %s", where, strings.ToUpper(m), best)
		case (res["content"] != nil || len(r.body) > 0) && !typed:
			t.Errorf("%s with a body of type %q, which the document does not give", where, mt)
		case strings.HasSuffix(mt, "json"):
			c.validate(t, where, c.get(media)["schema"], body, "#")
		}
	}
}

// validate fails the test where v, at the JSON pointer at, breaks the schema's
// type, enum, pattern, maxItems, required or properties; objects are closed.
func (c contract) validate(t *testing.T, where string, schema any, v any, at string) {
	t.Helper()
	s := c.get(schema)
	types := fmt.Sprint(s["type"]) // a name, or a list of them: no name holds another
	kind := map[string]string{"<nil>": "null", "bool": "boolean", "string": "string", "float64": "number", "[]interface {}": "array", "map[string]interface {}": "object"}[fmt.Sprintf("%T", v)]
	if n, ok := v.(float64); ok && n == float64(int64(n)) && strings.Contains(types, "integer") {
		kind = "integer"
	}
	obj, _ := v.(map[string]any)
	items, _ := v.([]any)
	switch max, _ := s["maxItems"].(float64); {
	case !strings.Contains(types, kind):
		t.Errorf("%s: %s is %s, where the document has %v", where, at, kind, types)
	case s["enum"] != nil && !slices.Contains(s["enum"].([]any), v),
		kind == "string" && s["pattern"] != nil && !regexp.MustCompile(s["pattern"].(string)).MatchString(v.(string)),
		kind == "array" && max > 0 && float64(len(items)) > max:
		t.Errorf("%s: %s is %v, against the enum, pattern or maxItems of the document", where, at, v)
	}
	required, _ := s["required"].([]any)
	for _, name := range required {
		if _, ok := obj[name.(string)]; kind == "object" && !ok {
			t.Errorf("%s: %s has no member %s", where, at, name)
		}
	}
	for name, member := range obj {
		if p, ok := c.get(s, "properties")[name]; ok {
			c.validate(t, where, p, member, at+"/"+name)
		} else {
			t.Errorf("%s: %s has a member %s, which the document does not declare", where, at, name)
		}
	}
	for i, item := range items {
		c.validate(t, where, s["items"], item, at+"/"+strconv.Itoa(i))
	}
}

// readYAML reads the YAML subset that openapi.yaml's first lines name.
func readYAML(t *testing.T, src string) map[string]any {
	var lines []string // neither blank nor comments; a literal block joins its key, quoted
	raw := strings.Split(src, "\n")
	for i := 0; i < len(raw); i++ {
		line, text := raw[i], strings.TrimSpace(raw[i])
		if strings.HasSuffix(text, ": |") {
			block := ""
			for ; i+1 < len(raw) && (strings.TrimSpace(raw[i+1]) == "" || indentOf(raw[i+1]) > indentOf(line)); i++ {
				block += strings.TrimPrefix(raw[i+1], strings.Repeat(" ", indentOf(line)+2)) + "\n"
			}
			line = strings.TrimSuffix(line, "|") + "'" + strings.ReplaceAll(strings.TrimRight(block, "\n"), "'", "''") + "\n'"
		}
		if text != "" && text[0] != '#' {
			lines = append(lines, line)
		}
	}
	at := 0
	var node func(in int) any // the block mapping or sequence indented by in
	node = func(in int) any {
		var seq []any
		m := map[string]any{}
		for at < len(lines) && indentOf(lines[at]) == in {
			text := strings.TrimSpace(lines[at])
			if item, ok := strings.CutPrefix(text, "- "); ok {
				lines[at] = strings.Repeat(" ", in+2) + item // the item is a mapping indented past the dash
				seq = append(seq, node(in+2))
				continue
			}
			key, value, ok := strings.Cut(text+" ", ": ") // no key holds ": ", quoted or not
			if !ok {
				t.Fatalf("openapi.yaml: %q is neither a mapping entry nor a sequence item", text)
			}
			key, value = fmt.Sprint(yamlScalar(t, key)), strings.TrimSpace(value)
			at++
			if value == "" && at < len(lines) && indentOf(lines[at]) > in {
				m[key] = node(indentOf(lines[at]))
			} else {
				m[key] = yamlScalar(t, value)
			}
		}
		if seq != nil {
			return seq
		}
		return m
	}
	doc, _ := node(0).(map[string]any)
	if at < len(lines) {
		t.Fatalf("openapi.yaml: %q is out of place", lines[at])
	}
	return doc
}

func indentOf(line string) int { return len(line) - len(strings.TrimLeft(line, " ")) }

// yamlScalar reads a plain or single-quoted scalar, a flow sequence of them with
// no commas inside ("[a, 'b']"), or a flow mapping of one entry ("{$ref: x}").
func yamlScalar(t *testing.T, s string) any {
	switch {
	case s == "" || s == "null":
		return nil
	case s == "true" || s == "false":
		return s == "true"
	case regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?$`).MatchString(s):
		f, _ := strconv.ParseFloat(s, 64)
		return f
	case s[0] == '\'':
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'")
	case s[0] == '{':
		key, value, _ := strings.Cut(s[1:len(s)-1], ": ")
		return map[string]any{key: yamlScalar(t, value)}
	case s[0] == '[':
		items := []any{}
		for _, item := range strings.FieldsFunc(s[1:len(s)-1], func(r rune) bool { return r == ',' }) {
			items = append(items, yamlScalar(t, strings.TrimSpace(item)))
		}
		return items
	case strings.ContainsAny(s[:1], "\"&*!|>%@`") || strings.Contains(s, ": ") || strings.Contains(s, " #"):
		t.Fatalf("openapi.yaml: %q is outside the YAML subset the contract test reads", s)
	}
	return s
}

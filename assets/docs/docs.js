// Renders /openapi.json without any third-party code. Text goes in through textContent only,
// so nothing in the document can inject markup.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

function schemaText(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return schemaText(schema.items) + "[]";
  if (schema.oneOf) return schema.oneOf.map(schemaText).join(" | ");
  const t = Array.isArray(schema.type) ? schema.type.join(" | ") : (schema.type || "object");
  return schema.format ? `${t} (${schema.format})` : t;
}

function renderSchema(name, schema) {
  const rows = Object.entries(schema.properties || {}).map(([prop, s]) =>
    el("tr", {},
      el("td", {}, el("code", {}, prop)),
      el("td", {}, schemaText(s)),
      el("td", {}, (schema.required || []).includes(prop) ? "required" : ""),
      el("td", {}, s.description || "")));
  return el("article", { id: "schema-" + name, class: "schema" },
    el("h3", {}, name),
    schema.description ? el("p", {}, schema.description) : null,
    rows.length ? el("table", {}, el("tbody", {}, ...rows)) : el("p", {}, schemaText(schema)));
}

function renderOperation(path, method, op) {
  const id = `${method}-${path}`.replace(/[^a-zA-Z0-9]+/g, "-");
  const params = (op.parameters || []).map(p =>
    el("li", {}, el("code", {}, p.name), ` (${p.in}${p.required ? ", required" : ""}) ${schemaText(p.schema)} `, p.description || ""));
  const body = op.requestBody && op.requestBody.content
    ? Object.entries(op.requestBody.content).map(([type, c]) => el("li", {}, el("code", {}, type), " ", schemaText(c.schema)))
    : [];
  const responses = Object.entries(op.responses || {}).map(([status, r]) =>
    el("tr", {},
      el("td", { class: "status s" + status[0] }, status),
      el("td", {}, r.description || ""),
      el("td", {}, Object.entries(r.content || {}).map(([t, c]) => `${t} ${schemaText(c.schema)}`).join(", "))));
  return el("article", { id, class: "operation" },
    el("h3", {}, el("span", { class: "method " + method }, method.toUpperCase()), " ", el("code", {}, path)),
    op.summary ? el("p", { class: "summary" }, op.summary) : null,
    op.description && op.description !== op.summary ? el("p", {}, op.description) : null,
    params.length ? el("div", {}, el("h4", {}, "Parameters"), el("ul", {}, ...params)) : null,
    body.length ? el("div", {}, el("h4", {}, "Request body"), el("ul", {}, ...body)) : null,
    el("h4", {}, "Responses"),
    el("table", {}, el("tbody", {}, ...responses)));
}

async function main() {
  const main = document.getElementById("operations");
  const toc = document.getElementById("toc");
  let doc;
  try {
    const res = await fetch("/openapi.json", { headers: { accept: "application/json" } });
    doc = await res.json();
  } catch (e) {
    document.getElementById("status").textContent = "Could not load /openapi.json: " + e;
    return;
  }
  document.getElementById("title").textContent = `${doc.info.title} ${doc.info.version}`;
  document.getElementById("description").textContent = doc.info.description || "";
  main.replaceChildren();
  const methods = ["get", "post", "put", "patch", "delete"];
  for (const [path, item] of Object.entries(doc.paths || {})) {
    for (const method of methods) {
      if (!item[method]) continue;
      const section = renderOperation(path, method, item[method]);
      main.append(section);
      toc.append(el("a", { href: "#" + section.id }, `${method.toUpperCase()} ${path}`));
    }
  }
  const schemas = document.getElementById("schemas");
  const components = (doc.components && doc.components.schemas) || {};
  if (Object.keys(components).length) schemas.append(el("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries(components)) schemas.append(renderSchema(name, schema));
}

main();

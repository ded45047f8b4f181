// Starts Swagger UI on this service's own OpenAPI document. A file rather than an inline
// script, so the page's Content-Security-Policy can forbid inline scripts.
window.ui = SwaggerUIBundle({
  url: "../openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  persistAuthorization: true,
});

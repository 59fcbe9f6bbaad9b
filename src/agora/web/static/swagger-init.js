// Starts Swagger UI on the API docs page (a static file: the CSP forbids inline scripts).
window.addEventListener("load", function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-openapi-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // The default validator is an outside service; nothing here may call out.
    validatorUrl: null,
    persistAuthorization: false,
  });
});

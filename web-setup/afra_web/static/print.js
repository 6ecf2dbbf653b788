// Opens the print dialog once the patient slip has loaded.
"use strict";
window.addEventListener("load", function () { window.print(); });

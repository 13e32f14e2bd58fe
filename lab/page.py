def experiment_page(result, exp): return '<html></html>'
